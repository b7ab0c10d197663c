"""Which detection is which bead: a global search over camera rotations followed by an
iterative match-and-solve (ICP-like) loop, robust to missing beads and false detections.

Search: for rotations covering SO(3) (viewing directions on a Fibonacci sphere x in-plane
angles) and a few depths, the phantom is placed so that its centre projects onto the centroid
of the detections at a depth that matches their spread; a truncated two-way distance between
projected beads and detections, which also compares the predicted and measured shadow radii
(the two bead sizes encode the order), scores each placement. The best placements start the
loop: Hungarian assignment within a shrinking gate, then PnP on the matched pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ixgs_engine.errors import GeometryError
from ixgs_engine.poses.detection import Detection
from ixgs_engine.poses.estimation import MIN_PNP_POINTS, extrinsics_matrix, pnp, pnp_ransac, reprojection_errors
from ixgs_engine.poses.phantom import BeadPhantom

RADIUS_WEIGHT = 2.0  # pixels of position error per pixel of shadow-radius difference
DEPTH_FACTORS = (0.75, 0.87, 1.0, 1.15, 1.33)


@dataclass
class Match:
    """A pose hypothesis and its bead-detection pairs (bead index, detection index)."""

    rotation: np.ndarray
    translation: np.ndarray
    intrinsics: np.ndarray
    pairs: list[tuple[int, int]]
    rms_px: float

    @property
    def matrix(self) -> np.ndarray:
        return extrinsics_matrix(self.intrinsics, self.rotation, self.translation)


def rotation_grid(directions: int = 240, inplane: int = 36) -> np.ndarray:
    """Rotations (M, 3, 3) whose third row (viewing direction) runs over a Fibonacci sphere and
    whose in-plane angle over ``inplane`` steps."""
    k = np.arange(directions) + 0.5
    z = 1 - 2 * k / directions
    azimuth = np.pi * (1 + 5**0.5) * k
    view = np.stack([np.sqrt(1 - z**2) * np.cos(azimuth), np.sqrt(1 - z**2) * np.sin(azimuth), z], axis=1)
    helper = np.where(np.abs(view[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    a = np.cross(helper, view)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.cross(view, a)
    angles = 2 * np.pi * np.arange(inplane) / inplane
    c, s = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
    x_axis = c * a[:, None] + s * b[:, None]
    y_axis = -s * a[:, None] + c * b[:, None]
    z_axis = np.broadcast_to(view[:, None], x_axis.shape)
    return np.stack([x_axis, y_axis, z_axis], axis=2).reshape(-1, 3, 3)


def _pair_costs(uv_beads: np.ndarray, r_beads: np.ndarray, uv_det: np.ndarray, r_det: np.ndarray) -> np.ndarray:
    """Squared distances (..., N, D), radius differences included where a detection has one."""
    d2 = np.sum((uv_beads[..., :, None, :] - uv_det[None, :, :]) ** 2, axis=-1)
    dr = np.nan_to_num(r_beads[..., :, None] - r_det, nan=0.0)
    return d2 + (RADIUS_WEIGHT * dr) ** 2


def coarse_search(
    phantom: BeadPhantom,
    detections: list[Detection],
    intrinsics: np.ndarray,
    keep: int = 24,
    rotations: np.ndarray | None = None,
    chunk: int = 1000,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``keep`` best (R, t) placements of the phantom for these detections, at least 15
    degrees apart.

    For each rotation and depth the phantom's projection (centred on the detections) is shifted
    by the image offset that most bead-detection pairs of matching size agree on (a vote over
    all pair offsets, bins of a fraction of the pattern's size); the number of agreeing pairs
    scores the placement. Voting, unlike a centroid, copes with beads hidden on one side.
    """
    rotations = rotation_grid() if rotations is None else rotations
    uv_det = np.array([[d.u, d.v] for d in detections])
    r_det = np.array([d.radius for d in detections])
    centre2 = uv_det.mean(axis=0)
    spread2 = max(float(np.sqrt(np.mean(np.sum((uv_det - centre2) ** 2, axis=1)))), 1.0)
    bin_px = 0.12 * spread2 + 1.0
    bins = int(math.ceil(4 * spread2 / bin_px)) + 2  # offsets up to +-2 spreads
    focal = math.sqrt(abs(intrinsics[0, 0] * intrinsics[1, 1]))
    local = phantom.positions - phantom.positions.mean(axis=0)
    half_sizes = phantom.diameters / 2
    tolerance = size_tolerance(phantom)
    votes, placements = [], []
    for start in range(0, len(rotations), chunk):
        R = rotations[start : start + chunk]
        m = len(R)
        cam = np.einsum("mij,nj->mni", R, local)
        spread3 = np.sqrt(np.mean(np.sum(cam[..., :2] ** 2, axis=-1), axis=1))
        for factor in DEPTH_FACTORS:
            depth = factor * focal * spread3 / spread2
            centre3 = depth[:, None] * np.linalg.solve(intrinsics, [centre2[0], centre2[1], 1.0])
            points = cam + centre3[:, None, :]
            hom = points @ intrinsics.T
            uv = hom[..., :2] / hom[..., 2:]
            radii = focal * half_sizes / points[..., 2]
            offsets = uv_det[None, None] - uv[:, :, None]  # (m, N, D, 2)
            cells = np.floor(offsets / bin_px).astype(np.int64) + bins // 2
            with np.errstate(divide="ignore", invalid="ignore"):
                same_size = ~(np.abs(np.log(r_det / radii[..., None])) > tolerance)
            valid = same_size & np.all((cells >= 0) & (cells < bins), axis=-1)
            flat = (np.arange(m)[:, None, None] * bins + cells[..., 0]) * bins + cells[..., 1]
            counts = np.bincount(flat[valid], minlength=m * bins * bins).reshape(m, bins, bins)
            counts = counts[:, :-1, :-1] + counts[:, 1:, :-1] + counts[:, :-1, 1:] + counts[:, 1:, 1:]
            best = counts.reshape(m, -1).argmax(axis=1)
            cell_u, cell_v = np.divmod(best, bins - 1)
            shift = (np.stack([cell_u, cell_v], axis=1) - bins // 2 + 1) * bin_px
            moved = np.linalg.solve(intrinsics, np.column_stack([centre2 + shift, np.ones(m)]).T).T
            t = depth[:, None] * moved / moved[:, 2:]
            votes.append(counts.reshape(m, -1).max(axis=1))
            placements.append((R, t - R @ phantom.positions.mean(axis=0)))
    all_R = np.concatenate([R for R, _ in placements])
    all_t = np.concatenate([t for _, t in placements])
    chosen: list[tuple[np.ndarray, np.ndarray]] = []
    for i in np.argsort(-np.concatenate(votes), kind="stable"):
        R, t = all_R[i], all_t[i]
        # Keep the starts apart: neighbours of one optimum would waste the matching loop.
        if all(np.trace(R @ other.T) < 1 + 2 * math.cos(math.radians(15)) for other, _ in chosen):
            chosen.append((R, t))
            if len(chosen) == keep:
                break
    return chosen


def projected_beads(matrix: np.ndarray, phantom: BeadPhantom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bead centres in the image (N, 2), shadow radii (N,) px (largest singular value of the
    projection's Jacobian times the bead radius) and depths (N,) mm."""
    P = np.asarray(matrix, dtype=np.float64)
    P = P / np.linalg.norm(P[2, :3])
    hom = phantom.positions @ P[:, :3].T + P[:, 3]
    uv = hom[:, :2] / hom[:, 2:]
    jacobian = (P[None, :2, :3] - uv[:, :, None] * P[None, 2:3, :3]) / hom[:, 2, None, None]
    radii = np.linalg.svd(jacobian, compute_uv=False)[:, 0] * phantom.diameters / 2
    return uv, radii, hom[:, 2]


def size_tolerance(phantom: BeadPhantom) -> float:
    """Largest |ln(measured / predicted shadow radius)| of a pair: half the smallest log ratio
    between distinct bead diameters (at most 0.25), so a small bead never pairs with a large one."""
    sizes = np.unique(np.round(phantom.diameters, 6))
    if len(sizes) < 2:
        return 0.25
    return float(min(0.25, 0.5 * np.min(np.diff(np.log(sizes)))))


def assign(
    matrix: np.ndarray, phantom: BeadPhantom, detections: list[Detection], gate_px: float
) -> list[tuple[int, int]]:
    """Hungarian assignment of beads to detections, pairs farther than ``gate_px`` dropped.
    A detection with a known bead index (a labelled manual point) pairs with that bead only."""
    uv, radii, depth = projected_beads(matrix, phantom)
    measured = np.array([d.radius for d in detections])
    cost = _pair_costs(uv, radii, np.array([[d.u, d.v] for d in detections]), measured)
    with np.errstate(divide="ignore", invalid="ignore"):
        wrong_size = np.abs(np.log(measured[None, :] / radii[:, None])) > size_tolerance(phantom)
    cost[wrong_size] = np.inf  # NaN radii (manual points) compare False: no size check
    for j, d in enumerate(detections):
        if d.bead is not None:
            keep = cost[d.bead, j]
            cost[:, j] = np.inf
            cost[d.bead, j] = min(keep, gate_px**2 * 0.99) if np.isfinite(keep) else gate_px**2 * 0.99
    cost[depth <= 0] = np.inf
    # Every pair beyond the gate costs the same, so an unmatched detection (a false one) never
    # takes a bead that a real detection needs: equivalent to letting both stay unassigned.
    rows, cols = linear_sum_assignment(np.minimum(cost, gate_px**2))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < gate_px**2]


def match_and_solve(
    phantom: BeadPhantom,
    detections: list[Detection],
    intrinsics: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    gate_px: float,
    final_gate_px: float,
    iterations: int = 12,
) -> Match | None:
    """Alternate assignment and PnP from a starting pose while the gate shrinks to
    ``final_gate_px``; None when fewer than 4 pairs survive."""
    R, t = rotation, translation
    gate = gate_px
    pairs: list[tuple[int, int]] = []
    uv = np.array([[d.u, d.v] for d in detections])
    for _ in range(iterations):
        new_pairs = assign(extrinsics_matrix(intrinsics, R, t), phantom, detections, gate)
        if len(new_pairs) < MIN_PNP_POINTS:
            return None
        beads, dets = zip(*new_pairs, strict=True)
        try:
            R, t = pnp(phantom.positions[list(beads)], uv[list(dets)], intrinsics, (R, t))
        except GeometryError:
            return None
        if new_pairs == pairs and gate == final_gate_px:
            break
        pairs = new_pairs
        gate = max(final_gate_px, gate * 0.6)
    pairs = assign(extrinsics_matrix(intrinsics, R, t), phantom, detections, final_gate_px)
    if len(pairs) < MIN_PNP_POINTS:
        return None
    beads, dets = zip(*pairs, strict=True)
    projected = extrinsics_matrix(intrinsics, R, t)
    hom = phantom.positions[list(beads)] @ projected[:, :3].T + projected[:, 3]
    rms = float(np.sqrt(np.mean(np.sum((hom[:, :2] / hom[:, 2:] - uv[list(dets)]) ** 2, axis=1))))
    return Match(R, t, intrinsics, pairs, rms)


def best_match(
    phantom: BeadPhantom,
    detections: list[Detection],
    intrinsics_options: list[np.ndarray],
    image_shape: tuple[int, int],
    nominal: np.ndarray | None = None,
    keep: int = 24,
) -> Match | None:
    """The best hypothesis (see :func:`_better`) over the intrinsics options (e.g. mirrored or
    not), starting from the global search and the nominal pose if any."""
    uv = np.array([[d.u, d.v] for d in detections])
    spread = float(np.sqrt(np.mean(np.sum((uv - uv.mean(axis=0)) ** 2, axis=1)))) if len(uv) else 0.0
    radii = [d.radius for d in detections if math.isfinite(d.radius)]
    final_gate = max(2.0, 1.0 * float(np.median(radii)) if radii else 3.0)
    best: Match | None = None
    labelled = [(d.bead, j) for j, d in enumerate(detections) if d.bead is not None]
    for K in intrinsics_options:
        starts = coarse_search(phantom, detections, K, keep)
        nominal_pose = _pose_of(nominal, K) if nominal is not None else None
        if nominal_pose is not None:
            starts.insert(0, nominal_pose)
        if len(labelled) >= MIN_PNP_POINTS:
            beads, dets = zip(*labelled, strict=True)
            try:
                starts.insert(0, pnp(phantom.positions[list(beads)], uv[list(dets)], K))
            except GeometryError:
                pass
        for R, t in starts:
            found = match_and_solve(phantom, detections, K, R, t, 0.15 * spread + 2.0, final_gate)
            best = _better(best, found, image_shape, phantom)
            if found is not None:
                for R2, t2 in reindexed_starts(found, phantom, uv, 2):
                    again = match_and_solve(phantom, detections, K, R2, t2, 2 * final_gate, final_gate)
                    best = _better(best, again, image_shape, phantom)
    if best is None:
        return None
    # Every shift along a helix fits the detected beads equally well: score them all (pairs less
    # missed beads), then polish the winner.
    winner = best
    for R, t in reindexed_starts(best, phantom, uv, None, (0.3, 1.0)):
        winner = _better(
            winner, _quick_match(phantom, detections, best.intrinsics, R, t, final_gate), image_shape, phantom
        )
    if winner is not best:
        polished = match_and_solve(
            phantom, detections, winner.intrinsics, winner.rotation, winner.translation, final_gate, final_gate
        )
        winner = _better(winner, polished, image_shape, phantom)
    return winner


def _quick_match(
    phantom: BeadPhantom,
    detections: list[Detection],
    intrinsics: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    gate_px: float,
) -> Match | None:
    """One assignment, one PnP update and a final assignment from a pose (no gate schedule)."""
    uv = np.array([[d.u, d.v] for d in detections])
    pairs = assign(extrinsics_matrix(intrinsics, rotation, translation), phantom, detections, gate_px)
    if len(pairs) < MIN_PNP_POINTS:
        return None
    beads, dets = (list(x) for x in zip(*pairs, strict=True))
    try:
        R, t = pnp(phantom.positions[beads], uv[dets], intrinsics, (rotation, translation))
    except GeometryError:  # a hypothesis PnP cannot solve is just a failed one (as in match_and_solve)
        return None
    pairs = assign(extrinsics_matrix(intrinsics, R, t), phantom, detections, gate_px)
    if len(pairs) < MIN_PNP_POINTS:
        return None
    beads, dets = (list(x) for x in zip(*pairs, strict=True))
    errors = reprojection_errors(extrinsics_matrix(intrinsics, R, t), phantom.positions[beads], uv[dets])
    return Match(R, t, intrinsics, pairs, float(np.sqrt(np.mean(errors**2))))


def missed_beads(match: Match, phantom: BeadPhantom, image_shape: tuple[int, int]) -> int:
    """Beads the match predicts well inside the image and clear of every other bead's shadow
    (so they should have been detected) that have no detection."""
    uv, radii, depth = projected_beads(match.matrix, phantom)
    height, width = image_shape
    gaps = np.linalg.norm(uv[:, None] - uv[None], axis=-1) - radii[:, None] - radii[None]
    np.fill_diagonal(gaps, np.inf)
    clear = (gaps.min(axis=1) > 2.0) & (depth > 0)
    margin = radii + 2
    border = np.minimum(np.minimum(uv[:, 0], width - 1 - uv[:, 0]), np.minimum(uv[:, 1], height - 1 - uv[:, 1]))
    inside = border > margin
    matched = np.zeros(phantom.count, dtype=bool)
    matched[[b for b, _ in match.pairs]] = True
    return int(np.sum(clear & inside & ~matched))


def _better(
    best: Match | None, found: Match | None, image_shape: tuple[int, int], phantom: BeadPhantom
) -> Match | None:
    """The match with more pairs minus missed beads wins (a helix shifted along itself can fit
    the detected beads as well, but then predicts clear beads where none were found); on a tie
    the lower RMS."""
    if found is None:
        return best
    if best is None:
        return found

    def key(match: Match) -> tuple[int, float]:
        return len(match.pairs) - missed_beads(match, phantom, image_shape), -match.rms_px

    return found if key(found) > key(best) else best


def reindexed_starts(
    match: Match, phantom: BeadPhantom, uv: np.ndarray, limit: int | None = 6, thresholds_px: tuple[float, ...] = (1.0,)
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Poses for the match's detections relabelled as beads ``k + b`` or ``k - b``: a helix is
    unchanged by screw motions and by half-turns about axes across it, so a pose that explains
    the detections with beads shifted along the helix (or in reverse order) is a typical wrong
    answer; the bead sizes tell the right shift. The unshifted labels are included: RANSAC
    then keeps the consistent majority of a partly wrong match. Returns the ``limit`` (None:
    all) relabellings whose RANSAC-PnP pose (one per inlier threshold) pairs the most detections."""
    beads = np.array([b for b, _ in match.pairs])
    dets = [d for _, d in match.pairs]
    scored = []
    for sign in (1, -1):
        for shift in range(-phantom.count, 2 * phantom.count):
            labels = shift + sign * beads
            valid = (labels >= 0) & (labels < phantom.count)
            if valid.sum() < MIN_PNP_POINTS + 2:
                continue
            for threshold in thresholds_px:
                found = pnp_ransac(
                    phantom.positions[labels[valid]], uv[np.array(dets)[valid]], match.intrinsics, threshold
                )
                if found is not None:
                    scored.append((int(found[2].sum()), found[:2]))
    scored.sort(key=lambda item: -item[0])
    return [pose for _, pose in scored[:limit]]


def _pose_of(matrix: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(R, t) nearest to ``K^-1 P`` (a nominal matrix with other intrinsics); None when the
    two disagree on mirroring."""
    A = np.linalg.solve(intrinsics, np.asarray(matrix, dtype=np.float64))
    A = A / np.linalg.norm(A[2, :3])
    u, _, vt = np.linalg.svd(A[:, :3])
    R = u @ vt
    if np.linalg.det(R) < 0:
        return None
    return R, A[:, 3]
