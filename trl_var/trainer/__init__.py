from .credit import panw_weights, propagate_mask, soft_value
from .var_grpo_config import VARGRPOConfig
from .var_grpo_trainer import VARGRPOTrainer
