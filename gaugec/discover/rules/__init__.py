"""The rule registry: one small rule per op, grouped by kind of op. Importing this package registers them all.

Where things go:
  index.py       view / reshape / transpose / slice / cat / expand / split: the action follows its indices
  linear.py      linear, matmul, convolution, embedding: GL writers and readers, contractions (Q/K), V/O
  elementwise.py ReLU / LeakyReLU (positive scalings), products (GLU, gains), sums (biases, translations, residual
                 sums that move their other writer), barriers
  norm.py        LayerNorm / RMSNorm / BatchNorm gains, the LayerNorm shift and kernel, the input scale at eps = 0,
                 the stream rotations (and the written-out RMSNorm pattern)
  attention.py   scaled dot-product attention, softmax and the translations it absorbs
  rope.py        the rotary-embedding pattern and its commutant
  reduce.py      mean / sum / pooling
A new op gets a rule in the file of its kind (``@rule("op_name", kind="mult" | "add" | "both" | "seed")``), with
the lemma it relies on defined next to it (``@lemma(...)``).
"""
from gaugec.discover.rules import attention, elementwise, index, linear, norm, reduce, rope  # noqa: F401
