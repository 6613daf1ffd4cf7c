"""The dataset report's identity check: is every photo the same person, and how varied are the head poses?

Each photo's descriptor is compared with the centroid of the *other* photos (leave-one-out). A photo is flagged

- as **probably another person** when that similarity is under :data:`~.scoring.SAME_PERSON` (dlib's threshold);
- as **unlike the others** when it is more than :data:`OUTLIER_GAP` under the median of the rest (a bad detection, a
  heavy filter, a look-alike).

Head pose comes from the same 5 landmarks: ``turn`` (the nose's offset along the eye line, in eye distances) and
``tilt`` (the eye line's angle). A set whose turns all lie within :data:`FRONTAL_SPREAD` gets a note: the model
will only know the face from the front.
"""

from __future__ import annotations

import statistics
from typing import Any

from .scoring import SAME_PERSON

OUTLIER_GAP = 0.15  # similarity under the others' median by more than this: "unlike the others"
FRONTAL_SPREAD = 0.15  # turns spread less than this: every photo faces the camera the same way
MIN_PHOTOS = 3  # fewer usable photos than this: no leave-one-out verdicts


def consistency(reference) -> dict[str, Any]:
    """The identity section of a dataset report (JSON data) from a :class:`~.reference.Reference`."""
    used = reference.used
    photos = [{"name": p.name, "similarity": None if p.loo is None else round(p.loo, 3), **p.face.pose()} for p in used]
    skipped = [{"name": p.name, "reason": p.reason} for p in reference.photos if not p.used]
    flagged = _flags(photos) if len(photos) >= MIN_PHOTOS else []
    return {
        "available": True,
        "backend": reference.tag,
        "photos": photos,
        "skipped": skipped,
        "flagged": flagged,
        "pose": _pose(photos),
    }


def unavailable(message: str) -> dict[str, Any]:
    return {"available": False, "message": message}


def _flags(photos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in photos:
        others = [q["similarity"] for q in photos if q is not p and q["similarity"] is not None]
        if p["similarity"] is None or not others:
            continue
        median = statistics.median(others)
        if p["similarity"] < SAME_PERSON:
            why = "probably another person"
        elif p["similarity"] < median - OUTLIER_GAP:
            why = "unlike the others"
        else:
            continue
        out.append({"name": p["name"], "similarity": p["similarity"], "others": [min(others), max(others)], "why": why})
    return out


def _pose(photos: list[dict[str, Any]]) -> dict[str, Any]:
    if not photos:
        return {}
    turns = [p["turn"] for p in photos]
    tilts = [p["tilt"] for p in photos]
    return {
        "turn": [min(turns), max(turns)],
        "tilt": [min(tilts), max(tilts)],
        "frontal_only": len(photos) >= MIN_PHOTOS and max(turns) - min(turns) < FRONTAL_SPREAD,
    }


def format_lines(section: dict[str, Any] | None) -> list[str]:
    """The identity section as report lines (empty when the report has none)."""
    if not section:
        return []
    if not section.get("available"):
        return [f"Identity check: skipped ({section.get('message', 'no face-identity backend')})"]
    photos = section.get("photos") or []
    sims = [p["similarity"] for p in photos if p.get("similarity") is not None]
    if len(photos) < MIN_PHOTOS:
        return [f"Identity check: {len(photos)} photo(s) with a usable face; it needs {MIN_PHOTOS} to compare them"]
    lines = [
        f"Identity check ({len(photos)} faces; similarity of each to the others, {SAME_PERSON} = same person): "
        f"{min(sims):.2f}-{max(sims):.2f}, median {statistics.median(sims):.2f}"
    ]
    for f in section.get("flagged") or []:
        lo, hi = f["others"]
        lines.append(
            f"  ! {f['name']}: similarity {f['similarity']:.2f}, the others {lo:.2f}-{hi:.2f} - {f['why']}: is this "
            "the same person? (remove it, or replace it with a clearer photo)"
        )
    pose = section.get("pose") or {}
    if pose:
        lines.append(
            f"Head pose: turn {pose['turn'][0]:+.2f} to {pose['turn'][1]:+.2f} (eye distances), tilt "
            f"{pose['tilt'][0]:+.0f} to {pose['tilt'][1]:+.0f} degrees"
        )
        if pose.get("frontal_only"):
            lines.append("  every photo faces the camera the same way: add a few turned left and right")
    return lines
