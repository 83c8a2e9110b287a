"""accord.client"""
