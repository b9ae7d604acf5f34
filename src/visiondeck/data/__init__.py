"""The data layer: sources → catalog → validation → splits → torch datasets.

Sub-modules are imported on demand; only `dataset` and `transforms` touch torch.
"""
