"""accord.gateway"""
