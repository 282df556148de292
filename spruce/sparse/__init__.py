"""Sparse weights as data: formats (CSR/COO/BSR), files (.smtx/.mtx/.npz), statistics, synthetic matrices,
named model shapes, checkpoint export and the real-vs-synthetic comparison report.

Kernels may import this package (and nothing else of ours). The light modules are re-exported here; the export
and report modules (``spruce.sparse.export``, ``spruce.sparse.compare``) are imported on demand.
"""
from spruce.sparse.files import (read_mtx, read_npz, read_smtx, write_mtx, write_npz,  # noqa: F401
                                 write_smtx)
from spruce.sparse.formats import (BSR, COO, CSR, bsr_to_csr, bsr_to_dense, coo_to_csr, coo_to_dense,  # noqa: F401
                                   csr_to_bsr, csr_to_coo, csr_to_dense, dense_bytes, dense_to_bsr,
                                   dense_to_coo, dense_to_csr, format_bytes)
from spruce.sparse.shapes import LayerShape, named_shapes  # noqa: F401
from spruce.sparse.stats import matrix_stats, row_length_ks  # noqa: F401
from spruce.sparse.synthetic import KINDS, benchmark_case, dense_operand, generate, nnz_for  # noqa: F401
