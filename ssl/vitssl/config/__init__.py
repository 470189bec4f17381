from vitssl.config.load import ConfigError, apply_overrides, build_config, flatten, load_config, to_yaml
from vitssl.config.schema import DataConfig, ModelConfig, OptimConfig, PretrainConfig, RunConfig

__all__ = ["ConfigError", "apply_overrides", "build_config", "flatten", "load_config", "to_yaml",
           "DataConfig", "ModelConfig", "OptimConfig", "PretrainConfig", "RunConfig"]
