"""accord.cli"""
