"""Course tasks on any denoiser, in pure torch: one small file each.

A task is a denoiser wrapper plus ``generate``. Whatever must hold at every network evaluation
(a guidance weight, inpainted pixels, the views of an illusion) goes into a wrapper shaped
like ``diffusion.guidance.GuidedDenoiser``: it takes a denoiser, is called as ``D(x, sigma)``,
returns x0_hat and states its cost in network evaluations (``evaluations``). Whatever watches
or adjusts the path once per step (a picture of the trajectory, a projection) is a hook. A
command then runs the wrapper on a trained model with the model's own sampler and noise levels:

    result = model.generate(MyWrapper(model.guided(n, guidance), ...), sampling, shape=..., generator=g)

and a test runs it with ``diffusion.generate.generate`` on a closed-form denoiser. Tasks import
only ``diffusion`` and ``pixels`` (tests/test_layering.py holds this), so they work the same on
a model trained here and on a pretrained one.
"""
