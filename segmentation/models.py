"""What each Gemini model accepts and returns, in one table; the request builder and the
start-up checks read it.

Facts as of December 2026 (Google's model-versions and migration pages):

- Vertex AI: ``gemini-3.8-flash`` (Sep 2026) and ``gemini-4-argon`` (Oct 2026) are current;
  ``gemini-3.5-flash`` stays until at least May 2027; every 2.5 model was retired on 2026-10-20.
- Developer API: ``gemini-3.5-flash`` is served by ``gemini-3.6-flash`` since Oct 2026.
- 3.6 and later run only in ``global`` or a multi-region (``eu``, ``us``), not a single region;
  they ignore temperature, top-K and top-P (Google documents it for 3.6; later models are
  treated the same). 3.7 and 3.8 reject ``thinking_level=MINIMAL``.
- 3.5-3.7 may return masks as polygons of 0-1000 ``[x, y]`` points; 3.6 and later may wrap
  the list in ``{"boxes": [...]}``. 2.5 returned base64 PNG masks.

A model id not in the table gets `UNKNOWN`: no thinking field, no temperature.

>>> spec = capabilities("gemini-3.8-flash")
>>> spec.thinking_level("minimal"), spec.serves("europe-west4"), spec.serves("eu")
('LOW', False, True)
>>> capabilities("gemini-3.5-flash", backend="api-key").family
'gemini-3.6'
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# Thinking levels, lowest first: the nearest accepted one replaces a configured level a model rejects.
THINKING_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH")
MULTI_REGIONS = frozenset({"eu", "us"})
# Warn at start-up this many days before a model's announced retirement.
RETIREMENT_WARNING_DAYS = 60
# What to set instead of a retired model, or where a model's location does not serve it.
RECOMMENDED_MODEL = "gemini-3.5-flash"
RECOMMENDED_CURRENT_MODEL = "gemini-3.8-flash"


@dataclass(frozen=True)
class ModelSpec:
    """One model family's row of the capability table."""

    family: str  # id prefix: "gemini-3.8" matches gemini-3.8-flash, gemini-3.8-pro, ...
    thinking: str  # "level", "budget", or "" (send no thinking field)
    levels: tuple[str, ...]  # accepted thinking levels (thinking == "level")
    temperature: bool  # temperature, top-K and top-P are honoured (else never sent)
    locations: frozenset[str]  # "global", "multi-region" (eu, us), "region" (us-central1, ...)
    mask: str  # "none", "png" or "polygon"
    polygon_order: str  # "xy" or "yx": the point order of polygon masks
    wrapped: bool  # the list may come wrapped as {"boxes": [...]}
    per_part_media: bool  # media resolution goes on the image part (Gemini 3+), else the request
    retires: dt.date | None  # announced retirement date on Vertex AI (None: none announced)
    known: bool = True

    def thinking_level(self, configured: str) -> str | None:
        """The accepted level nearest `configured` (ties go down), or None when none is sent."""
        if self.thinking != "level" or not configured or not self.levels:
            return None
        wanted = THINKING_LEVELS.index(configured.upper())
        return min(
            self.levels, key=lambda level: (abs(THINKING_LEVELS.index(level) - wanted), THINKING_LEVELS.index(level))
        )

    def serves(self, location: str) -> bool:
        """Whether Vertex AI serves this model in `location` (global, eu/us, or a region)."""
        location = (location or "global").lower()
        if location == "global":
            kind = "global"
        elif location in MULTI_REGIONS:
            kind = "multi-region"
        else:
            kind = "region"
        return kind in self.locations

    def retired(self, today: dt.date) -> bool:
        return self.retires is not None and today >= self.retires

    @property
    def location_names(self) -> str:
        """The locations that serve it, as a setting would name them."""
        names = []
        if "global" in self.locations:
            names.append("global")
        if "multi-region" in self.locations:
            names.append("eu or us")
        if "region" in self.locations:
            names.append("a single region such as europe-west4")
        return ", ".join(names)


_ALL_LEVELS = THINKING_LEVELS
_NO_MINIMAL = ("LOW", "MEDIUM", "HIGH")
_REGIONAL = frozenset({"global", "region"})
_GLOBAL_OR_MULTI = frozenset({"global", "multi-region"})

TABLE: tuple[ModelSpec, ...] = (
    ModelSpec("gemini-2.5", "budget", (), True, _REGIONAL, "png", "yx", False, False, retires=dt.date(2026, 10, 20)),
    ModelSpec(
        "gemini-3.5", "level", _ALL_LEVELS, True, _REGIONAL, "polygon", "xy", False, True, retires=None
    ),  # stays until at least May 2027; no date announced
    ModelSpec("gemini-3.6", "level", _ALL_LEVELS, False, _GLOBAL_OR_MULTI, "polygon", "xy", True, True, retires=None),
    ModelSpec("gemini-3.7", "level", _NO_MINIMAL, False, _GLOBAL_OR_MULTI, "polygon", "xy", True, True, retires=None),
    ModelSpec("gemini-3.8", "level", _NO_MINIMAL, False, _GLOBAL_OR_MULTI, "none", "yx", True, True, retires=None),
    # Only its date and its 3.6+ location rule are published: LOW is the lowest level every
    # later 3.x takes, so MINIMAL is not risked.
    ModelSpec("gemini-4", "level", _NO_MINIMAL, False, _GLOBAL_OR_MULTI, "none", "yx", True, True, retires=None),
)

# Unknown models: no thinking field and no temperature (either may be refused), request-level
# media resolution, any location (the service decides), both answer shapes accepted.
UNKNOWN = ModelSpec(
    "",
    "",
    (),
    False,
    frozenset({"global", "multi-region", "region"}),
    "none",
    "yx",
    True,
    False,
    retires=None,
    known=False,
)

# Model ids the Gemini Developer API serves with another model.
DEVELOPER_API_ROUTES = {"gemini-3.5-flash": "gemini-3.6-flash"}


def model_id(model: str) -> str:
    """The bare id of `model` ("publishers/google/models/gemini-3.8-flash" -> "gemini-3.8-flash")."""
    return model.rsplit("/", 1)[-1].strip().lower()


def capabilities(model: str, backend: str | None = "vertex") -> ModelSpec:
    """The table row for `model` as `backend` ("vertex" or "api-key") serves it; `UNKNOWN` if none."""
    name = model_id(model)
    if backend == "api-key":
        name = DEVELOPER_API_ROUTES.get(name, name)
    for spec in TABLE:
        if name == spec.family or name.startswith(spec.family + "-"):
            return spec
    return UNKNOWN


def startup_problems(model: str, backend: str | None, location: str, today: dt.date) -> list[str]:
    """What is wrong with running `model` from `location` on `today`, each naming the fix."""
    spec = capabilities(model, backend)
    problems = []
    if not spec.known:
        problems.append(
            f"GEMINI_MODEL={model} is not in the model table (segmentation/models.py): requests "
            f"carry no thinking field and no temperature; set GEMINI_MODEL={RECOMMENDED_MODEL} or "
            f"{RECOMMENDED_CURRENT_MODEL}, or add the model to the table"
        )
    if spec.retires is not None:
        days = (spec.retires - today).days
        if days <= 0:
            problems.append(
                f"GEMINI_MODEL={model} was retired on {spec.retires.isoformat()}: every image will "
                f"fail as model_retired; set GEMINI_MODEL={RECOMMENDED_MODEL} or {RECOMMENDED_CURRENT_MODEL}"
            )
        elif days <= RETIREMENT_WARNING_DAYS:
            problems.append(
                f"GEMINI_MODEL={model} retires on {spec.retires.isoformat()} (in {days} days): set "
                f"GEMINI_MODEL={RECOMMENDED_MODEL} or {RECOMMENDED_CURRENT_MODEL} before then"
            )
    if backend == "vertex" and not spec.serves(location):
        problems.append(location_problem(model, location, spec))
    return problems


def location_problem(model: str, location: str, spec: ModelSpec) -> str:
    """Why `location` cannot serve `model`, and what to set instead."""
    return (
        f"GOOGLE_CLOUD_LOCATION={location} does not serve GEMINI_MODEL={model}: it runs in "
        f"{spec.location_names}; set GOOGLE_CLOUD_LOCATION to one of those, or, to stay in a "
        f"single region, GEMINI_MODEL={RECOMMENDED_MODEL}"
    )


def retirement_error(model: str, spec: ModelSpec) -> str:
    """The per-image error of a model the service refused after its retirement date."""
    assert spec.retires is not None
    return (
        f"GEMINI_MODEL={model} was retired on {spec.retires.isoformat()} and the service refused "
        f"it: set GEMINI_MODEL={RECOMMENDED_MODEL} or {RECOMMENDED_CURRENT_MODEL}"
    )
