"""`sd.sampler` as each server understands it: ComfyUI's `sampler_name` and `scheduler`, and the web UI's name.

The owner's `[sd]` section speaks the web UI's language ("DPM++ 2M"), and the same config must give
the same kind of image on ComfyUI, which splits a sampler into the sampling method and the noise
schedule. Since version 1.9 the web UI picks a schedule per sampler when its scheduler is
"Automatic" (Karras for DPM++ 2M, exponential for the SDE samplers of the 2M and 3M kind); older
versions spelled that into the name ("DPM++ 2M Karras"). Both spellings map here, and so does a
ComfyUI sampler name itself ("dpmpp_2m", with the "normal" schedule). `[sd.comfyui] scheduler`
overrides the schedule.

Web UIs differ too: AUTOMATIC1111 1.9+ has `/sdapi/v1/schedulers` and pairs "DPM++ 2M" with Karras by
itself, while Forge Classic (and the web UI before 1.9) has no schedulers, runs "DPM++ 2M" on the plain
schedule and lists "DPM++ 2M Karras" beside it. `webui_sampler` picks the name that gives the owner the
same kind of image on the server at hand, and an unknown name (which the web UI would silently replace
by its default) is refused with the names the server has.
"""

from __future__ import annotations

import difflib

# The web UI's name -> (ComfyUI sampler_name, the schedule the web UI uses for it by default).
A1111_SAMPLERS: dict[str, tuple[str, str]] = {
    "DPM++ 2M": ("dpmpp_2m", "karras"),
    "DPM++ SDE": ("dpmpp_sde", "karras"),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", "exponential"),
    "DPM++ 2M SDE Heun": ("dpmpp_2m_sde_heun", "exponential"),
    "DPM++ 2S a": ("dpmpp_2s_ancestral", "karras"),
    "DPM++ 3M SDE": ("dpmpp_3m_sde", "exponential"),
    "Euler a": ("euler_ancestral", "normal"),
    "Euler": ("euler", "normal"),
    "LMS": ("lms", "normal"),
    "Heun": ("heun", "normal"),
    "DPM2": ("dpm_2", "karras"),
    "DPM2 a": ("dpm_2_ancestral", "karras"),
    "DPM fast": ("dpm_fast", "normal"),
    "DPM adaptive": ("dpm_adaptive", "normal"),
    "DDIM": ("ddim", "ddim_uniform"),
    "UniPC": ("uni_pc", "normal"),
    "LCM": ("lcm", "normal"),
}
# Before 1.9 the schedule was part of the name: "DPM++ 2M Karras", "DPM++ 2M SDE Exponential".
_SCHEDULE_SUFFIXES = {" karras": "karras", " exponential": "exponential"}

# ComfyUI's own names (comfy/samplers.py), accepted as they are.
COMFYUI_SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral", "gradient_estimation",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "ddim", "uni_pc", "uni_pc_bh2",
)
COMFYUI_SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta",
                      "linear_quadratic", "kl_optimal")


def comfyui_sampler(name: str, scheduler: str = "") -> tuple[str, str]:
    """ComfyUI's (sampler_name, scheduler) for `sd.sampler`; ValueError names the closest known sampler."""
    by_lower = {a1111.lower(): pair for a1111, pair in A1111_SAMPLERS.items()}
    wanted = name.strip().lower()
    pair = by_lower.get(wanted)
    if pair is None and wanted in COMFYUI_SAMPLERS:
        pair = (wanted, "normal")
    if pair is None:
        for suffix, schedule in _SCHEDULE_SUFFIXES.items():
            base = by_lower.get(wanted.removesuffix(suffix)) if wanted.endswith(suffix) else None
            if base is not None:
                pair = (base[0], schedule)
                break
    if pair is None:
        known = [*A1111_SAMPLERS, *(f"{a1111} Karras" for a1111 in A1111_SAMPLERS), *COMFYUI_SAMPLERS]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(A1111_SAMPLERS)}"
        raise ValueError(f"ComfyUI has no sampler like {name!r}; {hint}")
    return pair[0], scheduler or pair[1]


def webui_sampler(name: str, listed: dict[str, list[str]], *, has_schedulers: bool) -> tuple[str, str]:
    """The `sampler_name` to send for `sd.sampler` to a web UI whose `/sdapi/v1/samplers` gave `listed`
    (name -> aliases), and a note for the log when it differs from what the owner wrote.

    ValueError names what the server supports when it has no sampler of that name.
    """
    by_lower = {known.lower(): known for known in listed}
    by_lower.update({alias.lower(): known for known, aliases in listed.items() for alias in aliases})
    wanted = name.strip()
    known = by_lower.get(wanted.lower())
    if known is None and has_schedulers:  # 1.9+ splits "DPM++ 2M Karras" into a sampler and a schedule itself
        for suffix in _SCHEDULE_SUFFIXES:
            if wanted.lower().endswith(suffix) and wanted.lower().removesuffix(suffix) in by_lower:
                return wanted, ""
    if known is None:
        raise ValueError(f"the SD web UI has no sampler {name!r} (every image would get its default sampler, or "
                         f"an error); it has: {', '.join(listed)}")
    schedule = A1111_SAMPLERS.get(known, ("", "normal"))[1]
    with_schedule = by_lower.get(f"{known} {schedule}".lower())
    if has_schedulers or schedule == "normal" or with_schedule is None:
        return known, ""
    return with_schedule, (f"the SD web UI has no schedulers (Forge, or AUTOMATIC1111 before 1.9): sending "
                           f"{with_schedule!r}, the schedule AUTOMATIC1111 pairs with {known!r}")
