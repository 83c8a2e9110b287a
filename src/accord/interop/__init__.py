"""accord.interop"""
