"""Networks made elsewhere, as our denoisers: pretrained diffusers pipelines (``pretrained.py``),
loaded only when asked for (``pip install -e '.[pretrained]'``)."""
