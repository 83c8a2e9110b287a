"""accord.runtimes"""
