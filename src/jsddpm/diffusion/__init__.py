"""Diffusion maths in pure torch (no Lightning, no file I/O): noise schedules, the eps / x0 / v / EDM
parameterisations, training timestep draws, training losses, self-conditioning and samplers that drive
any callable denoiser."""

from .losses import (
    UncertaintyWeighting,
    channel_weight_vector,
    diffusion_loss,
    focal_frequency_loss,
    lesion_weight_map,
    lp_loss,
    min_snr_weights,
    x0_space_weights,
)
from .parameterization import PREDICTION_TYPES, SIGMA_DATA, network_input, target_from, x0_eps_from, x0_error_factor
from .samplers import (
    SAMPLERS,
    ConditionedDenoiser,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    randn,
    sample,
    spaced_timesteps,
)
from .schedule import SCHEDULES, T_SAMPLINGS, NoiseSchedule, make_betas, sample_timesteps, training_target
from .self_conditioning import self_condition_input

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULES",
    "SIGMA_DATA",
    "T_SAMPLINGS",
    "ConditionedDenoiser",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPP2MSampler",
    "NoiseSchedule",
    "UncertaintyWeighting",
    "channel_weight_vector",
    "diffusion_loss",
    "focal_frequency_loss",
    "lesion_weight_map",
    "lp_loss",
    "make_betas",
    "min_snr_weights",
    "network_input",
    "randn",
    "sample",
    "sample_timesteps",
    "self_condition_input",
    "spaced_timesteps",
    "target_from",
    "training_target",
    "x0_eps_from",
    "x0_error_factor",
    "x0_space_weights",
]
