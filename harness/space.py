"""Search-space dimensions: declared by plugins, overridden from YAML, turned into Ray Tune domains in one place."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Dim(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogUniform(_Dim):
    type: Literal["loguniform"] = "loguniform"
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "LogUniform":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self


class Uniform(_Dim):
    type: Literal["uniform"] = "uniform"
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> "Uniform":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self


class IntRange(_Dim):
    """Integers from low to high, both included."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self


class Choice(_Dim):
    type: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=1)


class Fixed(_Dim):
    type: Literal["fixed"] = "fixed"
    value: Any


Dim = Annotated[Union[LogUniform, Uniform, IntRange, Choice, Fixed], Field(discriminator="type")]
Space = dict[str, Dim]


def to_tune(space: Space) -> dict[str, Any]:
    """The Ray Tune param_space for a validated space."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, LogUniform):
            out[name] = tune.loguniform(dim.low, dim.high)
        elif isinstance(dim, Uniform):
            out[name] = tune.uniform(dim.low, dim.high)
        elif isinstance(dim, IntRange):
            out[name] = (tune.lograndint if dim.log else tune.randint)(dim.low, dim.high + 1)
        elif isinstance(dim, Choice):
            out[name] = tune.choice(list(dim.values))
        else:
            out[name] = dim.value
    return out

