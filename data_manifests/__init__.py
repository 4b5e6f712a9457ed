"""data_manifests"""
