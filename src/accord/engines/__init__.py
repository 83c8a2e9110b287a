"""accord.engines"""
