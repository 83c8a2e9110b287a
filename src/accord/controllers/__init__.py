"""accord.controllers"""
