"""The simulated GPU (demo mode): a Paperspace-like machine API and a Stable Diffusion web UI on loopback.

Both speak the real HTTP protocols, so avatargen's Paperspace and SD clients run against them
unchanged; images are drawn with Pillow, without a GPU. Start it with `SimulatedGpu` (in this event
loop), `run_simulator`, or standalone with `python -m avatargen.simulator`. Faults to inject are
listed in `FAULTS`.
"""

from avatargen.simulator.faults import FAULTS, Faults
from avatargen.simulator.loopback import LoopbackServer
from avatargen.simulator.runner import SimulatedGpu, run_simulator

__all__ = ["FAULTS", "Faults", "LoopbackServer", "SimulatedGpu", "run_simulator"]
