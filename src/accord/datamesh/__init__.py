"""accord.datamesh"""
