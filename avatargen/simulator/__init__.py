"""The simulated GPU (demo mode): a cloud machine API (Paperspace's or RunPod's) and a Stable Diffusion web UI
on loopback.

Both speak the real HTTP protocols (the machine APIs answer what the vendors' OpenAPI documents promise),
so avatargen's provider and SD clients run against them unchanged; images are drawn with Pillow, without
a GPU. Only demo mode and the tests load this package: production code never imports it. Start it
with `SimulatedGpu` (in this event loop), `run_simulator`, or standalone with
`python -m avatargen.simulator`. Faults to inject are listed in `FAULTS`.
"""

from avatargen.simulator.faults import FAULTS, Faults
from avatargen.simulator.loopback import LoopbackServer
from avatargen.simulator.runner import SimulatedGpu, run_simulator

__all__ = ["FAULTS", "Faults", "LoopbackServer", "SimulatedGpu", "run_simulator"]
