"""How convolutions and reductions run on XLA: lowerings, native CPU kernels, per-program compile options.

Public import paths:

* ``jaxcnn.lowering.conv`` — ``conv2d`` and the lowerings ``IMPLS`` that ``with_conv_impl`` chooses from;
* ``jaxcnn.lowering.native`` — the hand-written depthwise kernels (``csrc/``) behind XLA's FFI;
* ``jaxcnn.lowering.native_dense`` — dense convolutions whose weight gradient is the native kernel;
* ``jaxcnn.lowering.reductions`` — batch-statistics reductions XLA:CPU runs fast;
* ``jaxcnn.lowering.compile_options`` — per-program XLA options picked by timing behind an accuracy gate.

Nothing here changes a result beyond float32 rounding; everything here changes how fast it comes.
"""
