"""accord.services"""
