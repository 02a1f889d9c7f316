"""Files and formats, under one policy: read only regular files, write atomically, never unpickle code.

Public import paths:

* ``jaxcnn.storage.files`` — atomic writes, the regular-file readers, memory checks, version records;
* ``jaxcnn.storage.outdir`` — the output-folder lock every run and study takes;
* ``jaxcnn.storage.checkpoint`` — training checkpoints (safetensors + sha256-checked JSON);
* ``jaxcnn.storage.weights`` — ``load_model(DIR)``: a run's model, params and state from its folder alone;
* ``jaxcnn.storage.safetensors`` — the safetensors format, read and written without the package;
* ``jaxcnn.storage.safe_pickle`` — a data-only unpickler for CIFAR's python batches;
* ``jaxcnn.storage.interop`` — PyTorch / torchvision state dicts to and from jaxcnn parameters
  (not named ``torch``: ``from jaxcnn.storage import torch`` would shadow the user's torch).
"""
