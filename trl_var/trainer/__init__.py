from .credit import panw_weights, propagate_mask, soft_value


def __getattr__(name):
    # TRL takes seconds to import: load it when the trainer is first asked for
    if name == "VARGRPOConfig":
        from .var_grpo_config import VARGRPOConfig

        return VARGRPOConfig
    if name == "VARGRPOTrainer":
        from .var_grpo_trainer import VARGRPOTrainer

        return VARGRPOTrainer
    if name == "LogSampleImagesCallback":
        from .callbacks import LogSampleImagesCallback

        return LogSampleImagesCallback
    raise AttributeError(f"module 'trl_var.trainer' has no attribute {name!r}")
