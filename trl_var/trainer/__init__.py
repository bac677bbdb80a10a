from .var_grpo_config import VARGRPOConfig
from .var_grpo_trainer import VARGRPOTrainer
