"""The tiny-model zoo: small MoE models of each supported family (``rl.zoo.models``), their pre-training on a
synthetic task and the cache behind ``tiny://<family>/<task>`` refs (``rl.zoo.pretraining``), and a few steps of
the tiny recipe trained on the spot for the notebooks (``rl.zoo.quickrun``)."""
