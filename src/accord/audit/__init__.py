"""accord.audit"""
