"""Course tasks on any denoiser, in pure torch: one small file each.

A task is a denoiser wrapper plus ``generate``. Whatever must hold at every network evaluation
(a guidance weight, inpainted pixels, the views of an illusion) goes into a wrapper shaped
like ``diffusion.guidance.GuidedDenoiser``: it takes a denoiser, is called as ``D(x, sigma)``
and returns x0_hat. Whatever watches or adjusts the path once per step (a picture of the
trajectory, a projection) is a hook. Then

    from ..diffusion.generate import generate
    result = generate(MyWrapper(denoiser, ...), sigmas, sampler, shape=..., generator=g)

Tasks import only ``diffusion`` and ``pixels`` (tests/test_layering.py holds this), so they
work the same on a model trained here and on a pretrained one.
"""
