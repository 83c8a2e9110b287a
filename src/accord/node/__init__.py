"""accord.node"""
