"""PhysCtrl at toy scale: a Diffusion Transformer generates the future 3-D trajectory of a point-cloud object
from physics conditions (an applied force, its drag point, the stiffness), trained on trajectories simulated
in code (Wang et al., 2025, "PhysCtrl: Generative Physics for Controllable and Physics-Grounded Video
Generation", arXiv 2509.20358), the smallest honest instance of 4-D generation (a 3-D shape moving in time).

The math.
  simulator         an object of N = 32 points (a box, a ball, an extruded digit 7), mass 1/N each, every
                    pair closer than sqrt(3) lattice spacings joined by a spring of rest length L_ij (its
                    length at frame 0) and constant k (the analog of Young's modulus; log10 k in
                    [STIFFNESS]), a dashpot c = 2 zeta sqrt(k m) along each spring (zeta =
                    DAMPING; one spring between two free masses m, its stretch of reduced mass
                    m / 2, is damped at the ratio c / (2 sqrt(k m / 2)) = sqrt(2) zeta = 0.42;
                    corrected: this sentence called zeta that ratio; the formula is unchanged),
                    gravity g = (0, 0, -9.81), a ground z >= 0 (restitution e, Coulomb friction
                    mu), and a force f on the drag point D's neighbourhood for the first
                    FORCE_FRAMES frames (weights w_i = exp(-|p_i - p_D|^2 / (2 s^2)) normalised to
                    sum 1, s one spacing). Spring force on i from j, d = p_j - p_i, n = d / |d|:
                    F_ij = (k (|d| - L_ij) + c (v_j - v_i) . n) n, and F_ji = -F_ij.
  integrator        symplectic (semi-implicit) Euler with h = frame / SUBSTEPS:
                    v <- v + h a(p, v),  p <- p + h v  (the new v), then the ground: a point below z = 0 is
                    put on it, an approaching normal velocity v_z < 0 becomes -e v_z, and the tangential
                    velocity shrinks by mu |dv_z| (not past 0). Closed forms the tests check: in free fall
                    p_n = p_0 + n h v_0 + g h^2 n (n + 1) / 2 (the discrete form of p_0 + v_0 t + g t^2 / 2: the
                    extra g h t / 2 is the integrator's O(h) error); with no gravity, damping, ground or force
                    every F_ij = -F_ji, so the momentum sum_i m v_i is constant to round-off, and the energy
                    (kinetic + sum k (|d| - L)^2 / 2) oscillates within O(h) without drift (symplectic).
  data              a trajectory: F frames (--frames, frame 0 at rest) of N x 3 positions at FPS frames a
                    second. Conditions: the shape (seen in frame 0), the drag point D (marked on its tokens by
                    its weight w_i), f = |f| (cos a cos b, sin a cos b, sin b) with azimuth a, elevation b and
                    |f| in [FORCE], and log10 k. Held-out conditions are never trained on: an azimuth band
                    (HELDOUT_AZIMUTH) and a stiffness band (HELDOUT_STIFFNESS) inside the training ranges.
                    Generated from a seed and cached (common.cache_dir).
  the model         x_1 = (p_1 - p_0, ..., p_{F-1} - p_0) (B, F-1, N, 3), displacements from frame 0; cfm.py's
                    straight path, t = 0 noise, t = 1 data: x_t = (1 - t) x_0 + t x_1, velocity x_1 - x_0 (Lipman et al.,
                    arXiv 2210.02747); c is frame 0, the drag weights, f and log k.
  v- and x-         --predict v (the default): the network gives the velocity, L = E || v_theta - (x_1 - x_0) ||^2.
  prediction        --predict x: the network gives the trajectory, x1_theta(x_t, t, c), and the field is
                    v_theta = (x1_theta - x_t) / (1 - t): since x_t = (1 - t) x_0 + t x_1, (x_1 - x_t) / (1 - t) = x_1 - x_0,
                    so v_theta - (x_1 - x_0) = (x1_theta - x_1) / (1 - t), and the loss L = E || x1_theta - x_1 ||^2 is
                    cfm.py's velocity loss weighted by (1 - t)^2 (Li & He, arXiv 2511.13720: clean data lie on a
                    low-dimensional set, noise and velocity do not). Given all conditions a trajectory is one point
                    (the simulator is deterministic): x-prediction learns it as a regression at every t, where the
                    velocity target carries the noise x_0 along. Measured (benchmarks/README.md): x-prediction fits
                    the trajectories given every condition more closely, but with the stiffness withheld its samples
                    spread less than the prior (it leans to the mean, as the regressor does); v-prediction keeps the
                    spread, so it is the default.
  shift             --shift K: the path carries x_1 / K and the sampler multiplies its end point by K. Since
                    x_t = (1 - t) x_0 + t x_1 / K = ((1 - t) / (1 - t')) ((1 - t') x_0 + t' x_1) with t' / (1 - t') = t / (K (1 - t)),
                    i.e. t' = t / (t + K (1 - t)), a point of the shifted path at t is the unshifted path's point at the
                    earlier time t', rescaled: the signal-to-noise ratio at every t falls by K^2, and uniform t spends more
                    of training where noise dominates (SD3's shift of the noise level sigma = 1 - t to
                    K sigma / (1 + (K - 1) sigma), Esser et al., arXiv 2403.03206, is the same map). The displacements are
                    already small against the unit noise (per-frame sd 0.01 to 0.6), so K > 1 moves further from the
                    usual unit-variance scaling. Measured (benchmarks/README.md): x-prediction with K = 8 fits the
                    trajectories given every condition closer than with K = 1 (still not as close as the regressor),
                    and with the stiffness withheld its samples collapse towards the mean as the regressor's do: the
                    noisy end of the path teaches the conditional mean, the clean end the spread.
  network           a DiT (Peebles & Xie, arXiv 2212.09748) over (F - 1) / P x N tokens, a token one point over P
                    consecutive frames (--frame-patch P, a tubelet as video DiTs patch time): [x_t over those frames,
                    p_0 of its point, w_i, w_i f (the force it receives: the drag point marked on its tokens)] embedded
                    plus a sin-cos embedding of its first frame; blocks alternate
                    attention across the points of a frame and across the frames of a point (factorised
                    space-time attention, as PhysCtrl's and video DiTs'); time and physics (f, log k, and
                    whether each is given) enter every block through adaLN-Zero. No point index is embedded, so
                    permuting the points permutes the output.
  withheld          during training the stiffness is dropped (not given) with probability --p-withhold and all
                    physics (f and k) with --p-uncond. Generating with k withheld samples p(trajectory | f, D,
                    frame 0) = E_k p(trajectory | f, k, ...), a mixture over the stiffness prior: the stiffness
                    fitted to each generated trajectory by the simulator (a grid search over log k) should be
                    distributed as the prior. A regressor (the same network trained with MSE to predict x_1 from
                    c alone, x1_theta(0, 0, c)) predicts the mixture's mean, one blurred motion, and its fitted
                    stiffnesses collapse.
  guidance          v = v_theta(x, t, null) + w (v_theta(x, t, c) - v_theta(x, t, null)) (Ho & Salimans, arXiv
                    2207.12598), null: no physics given.
  tracks            the generated trajectories through a pinhole camera on the -y side, as 2-D point tracks
                    (pixels of a CANVAS x CANVAS image) with visibility (in the canvas and not behind a nearer
                    point), written to OUT/tracks.pt: {"tracks": (n, F, N, 2) float (x right, y down),
                    "visible": (n, F, N) bool, "size": (H, W), "fps": FPS}, the input of motion_prompting.py.

The lecture's PhysCtrl slide (NICE Lab, 2026) has three stages: lift the image to a 3-D point cloud, generate its
future 3-D trajectory with a DiT from physics conditions, guide a video model with it. Here the cloud is given
(frame 0 of the simulation), the second stage is this file, and the third is motion_prompting.py fed with
OUT/tracks.pt. Departures from the paper: PhysCtrl represents 2048 points, trains on 550K animations of four materials
from MPM simulations, and conditions on the drag force, drag point, Young's modulus, Poisson's ratio and the
material class, with a physics loss besides the diffusion loss; here one elastic material, a mass-spring
simulator, 32 points and the flow-matching loss alone.

Run:
  python physctrl.py                             # simulate, train the flow and the regressor, evaluate; ~4 min
  python physctrl.py --ckpt runs/physctrl-springs/ckpt.pt --force 0 8 12 --drag 5 --stiffness 2.5
                                                 # 8 trajectories for one condition: picture and OUT/tracks.pt
  python physctrl.py --ckpt runs/physctrl-springs/ckpt.pt --force 0 8 12 --drag 5 --withhold
                                                 # the same push, the stiffness withheld: 8 draws, their fitted k
  python physctrl.py --predict x --shift 8       # the shifted path: closer fits, a collapsed withheld mode
"""
import argparse
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

# -----------------------------------------------------------------------------
# the simulator

POINTS = 32  # points per object
FPS, SUBSTEPS, FORCE_FRAMES = 20, 32, 4  # frames a second, integrator steps a frame, frames the force acts
GRAVITY, RESTITUTION, FRICTION, DAMPING = 9.81, 0.3, 0.5, 0.3  # g, e, mu, zeta
SPACING = 0.25  # lattice spacing of the shapes (the object is about 1 across)
STIFFNESS = (1.0, 2.5)  # log10 k: soft to nearly rigid
FORCE = (4.0, 16.0)  # |f| (total mass 1: the acceleration it gives the whole object)
ELEVATION = (0.2, 1.2)  # b, radians above the ground
HELDOUT_AZIMUTH = (math.radians(30), math.radians(60))  # held-out force directions
HELDOUT_STIFFNESS = (1.6, 1.9)  # held-out log10 k
SHAPES = ("box", "ball", "digit")
CANVAS = 24  # the tracks' image size (pixels)
CAMERA, FOCAL = (0.0, -6.0, 1.0), 1.5  # the tracks' camera: position, focal length (canvas widths)
N_TEST = 500  # held-out trajectories simulated (--n-eval of them evaluated)


def shape_points(name):
    """The rest positions (N, 3) of a shape, centred in x and y, its lowest points on the ground z = 0."""
    s = SPACING
    if name == "box":  # 4 x 4 x 2 lattice
        g = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(2), indexing="ij"), -1)
        p = g.reshape(-1, 3).double() * s
    elif name == "ball":  # the 32 lattice points nearest the centre of a 5 x 5 x 5 block (ties by index)
        g = torch.stack(torch.meshgrid(*[torch.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3).double()
        r = (g - 2).pow(2).sum(1) + 1e-6 * torch.arange(len(g))
        p = g[r.argsort()[:POINTS]] * s
    elif name == "digit":  # a 7 of 16 cells, standing in the x-z plane, two layers deep in y
        rows = ["####", "####", "..##", "..#.", ".##.", ".#..", "##.."]  # top row first
        cells = [(c, 6 - r) for r, line in enumerate(rows) for c, ch in enumerate(line) if ch == "#"]
        xz = torch.tensor(cells, dtype=torch.float64)
        p = torch.cat([torch.stack([xz[:, 0], torch.full((16,), float(y)), xz[:, 1]], 1) for y in (0, 1)]) * s
    else:
        raise common.UserError(f"unknown shape {name!r}: choose from {', '.join(SHAPES)}")
    p = p - torch.tensor([p[:, 0].mean(), p[:, 1].mean(), p[:, 2].min()], dtype=torch.float64)
    return p


def springs(p0):
    """The springs of rest positions p0 (N, 3): index pairs (S, 2) i < j closer than sqrt(3) spacings."""
    d = torch.cdist(p0, p0)
    i, j = torch.triu_indices(len(p0), len(p0), 1)
    keep = d[i, j] < SPACING * (math.sqrt(3) + 0.01)
    return torch.stack([i[keep], j[keep]], 1)


class Simulator:
    """Mass-spring objects under gravity on a ground, integrated by symplectic Euler (the docstring's
    equations), batched over trajectories of one shape, in float64."""

    def __init__(self, shape, gravity=GRAVITY, damping=DAMPING, ground=True):
        """shape: a name in SHAPES, or rest positions (N, 3) (springs as for the shapes, mass 1 / N
        each)."""
        if isinstance(shape, str):
            self.p0 = shape_points(shape)  # (N, 3)
        else:
            self.p0 = torch.as_tensor(shape, dtype=torch.float64)
        self.pairs = springs(self.p0)  # (S, 2)
        S = len(self.pairs)
        self.D = torch.zeros(S, len(self.p0), dtype=torch.float64)  # (D p)_s = p_j - p_i, (i, j)
        self.D[torch.arange(S), self.pairs[:, 1]] = 1.0
        self.D[torch.arange(S), self.pairs[:, 0]] = -1.0
        self.rest = (self.D @ self.p0).norm(dim=1)  # L_ij (S,)
        self.gravity, self.damping, self.ground = gravity, damping, ground
        self.DT = self.D.T.contiguous()

    def drag_weights(self, drag):
        """w (B, N): the force's share per point around drag points (B,) of this shape, summing to 1."""
        d2 = (self.p0[None] - self.p0[drag][:, None]).pow(2).sum(-1)
        w = torch.exp(-d2 / (2 * SPACING ** 2))
        return w / w.sum(1, keepdim=True)

    def acceleration(self, p, v, k, force):
        """a of positions and velocities p, v, stiffness k (B,) and force per point, all laid out (3, B, N)
        (a coordinate's values side by side: the spring sums are (3 B, N) x (N, S) products)."""
        m = 1.0 / p.shape[2]
        d, dv = p @ self.DT, v @ self.DT  # p_j - p_i, v_j - v_i (3, B, S)
        length = (d * d).sum(0).sqrt()  # (B, S)
        n = d / length
        c = 2 * self.damping * torch.sqrt(k * m)[:, None]  # the dashpot (docstring: its ratio)
        f = (k[:, None] * (length - self.rest) + c * (dv * n).sum(0)) * n  # F_ij, the force on i (3, B, S)
        a = (force - f @ self.D) / m  # F_ij on i, F_ji = -F_ij on j
        a[2] -= self.gravity
        return a

    @staticmethod
    def contact(p, v):
        """The ground z >= 0 on (3, B, N) states: a point below it is put on it; its approaching normal velocity
        v_z < 0 becomes -e v_z, and its tangential velocity shrinks by mu |dv_z|, not past 0."""
        dvz = torch.where((p[2] < 0) & (v[2] < 0), -(1 + RESTITUTION) * v[2], 0.0)
        vt = v[:2] * (1 - FRICTION * dvz / (v[:2] * v[:2]).sum(0).sqrt().clamp_min(1e-12)).clamp_min(0.0)
        return torch.cat([p[:2], p[2:].clamp_min(0.0)]), torch.cat([vt, (v[2] + dvz)[None]])

    def step(self, p, v, k, force, h):
        """One symplectic Euler step of (3, B, N) states: v <- v + h a(p, v), p <- p + h v, then the ground."""
        v = v + h * self.acceleration(p, v, k, force)
        p = p + h * v
        return self.contact(p, v) if self.ground else (p, v)

    def run(self, k, force, drag, frames, substeps=SUBSTEPS, p=None, v=None):
        """Positions (B, frames, N, 3) from rest at frame 0 (or from p, v (B, N, 3)), stiffness k (B,) (not log),
        force f (B, 3) on the drag points' neighbourhoods for the first FORCE_FRAMES frames."""
        B = len(k)
        p = (self.p0.expand(B, -1, -1) if p is None else p).permute(2, 0, 1).contiguous()  # (3, B, N)
        v = torch.zeros_like(p) if v is None else v.permute(2, 0, 1).contiguous()
        push = (self.drag_weights(drag)[..., None] * force[:, None, :]).permute(2, 0, 1)  # (3, B, N)
        h = 1.0 / (FPS * substeps)
        out = [p]
        for frame in range(1, frames):
            f = push if frame <= FORCE_FRAMES else torch.zeros_like(push)
            for _ in range(substeps):
                p, v = self.step(p, v, k, f, h)
            out.append(p)
        return torch.stack(out).permute(2, 0, 3, 1)  # (B, frames, N, 3)


# -----------------------------------------------------------------------------
# conditions and data sets: simulated from a seed, cached

def heldout(azimuth, log_k):
    """Whether conditions are in the held-out region: an unseen force direction or an unseen stiffness."""
    a0, a1 = HELDOUT_AZIMUTH
    k0, k1 = HELDOUT_STIFFNESS
    return ((azimuth >= a0) & (azimuth < a1)) | ((log_k >= k0) & (log_k < k1))


def draw_conditions(n, split, generator):
    """n conditions of one split ("train": outside the held-out region, "test": inside it): shape index,
    drag point, force f (n, 3), log10 k (n,), by rejection from the full ranges."""
    out = {k: [] for k in ("shape", "drag", "force", "log_k")}
    have = 0
    while have < n:
        m = 4 * n
        u = torch.rand(m, 4, generator=generator, dtype=torch.float64)
        azimuth, elevation = 2 * math.pi * u[:, 0], ELEVATION[0] + (ELEVATION[1] - ELEVATION[0]) * u[:, 1]
        size, log_k = FORCE[0] + (FORCE[1] - FORCE[0]) * u[:, 2], STIFFNESS[0] + (STIFFNESS[1] - STIFFNESS[0]) * u[:, 3]
        keep = heldout(azimuth, log_k) == (split == "test")
        force = size[:, None] * torch.stack([azimuth.cos() * elevation.cos(), azimuth.sin() * elevation.cos(),
                                             elevation.sin()], 1)
        out["force"].append(force[keep])
        out["log_k"].append(log_k[keep])
        out["shape"].append(torch.randint(0, len(SHAPES), (m,), generator=generator)[keep])
        out["drag"].append(torch.randint(0, POINTS, (m,), generator=generator)[keep])
        have += int(keep.sum())
    return {k: torch.cat(v)[:n] for k, v in out.items()}


def simulate(cond, frames):
    """Trajectories (n, frames, N, 3) float64 of conditions cond (draw_conditions' dict), shape by shape, on one
    thread (the steps' tensors are small: more threads only wait on each other, far slower on a busy machine)."""
    traj = torch.empty(len(cond["shape"]), frames, POINTS, 3, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s, name in enumerate(SHAPES):
            idx = (cond["shape"] == s).nonzero().flatten()
            if len(idx):
                traj[idx] = Simulator(name).run(10 ** cond["log_k"][idx], cond["force"][idx], cond["drag"][idx], frames)
    finally:
        torch.set_num_threads(threads)
    return traj


def pack(cond, p0):
    """The network's conditions per point (n, N, 8): frame 0 (3), drag weight (1), f / FORCE[1] (3) and log k
    scaled to [-1, 1] (1), the last four the same for every point."""
    w = torch.empty(len(p0), POINTS, dtype=torch.float64)
    for s, name in enumerate(SHAPES):
        idx = (cond["shape"] == s).nonzero().flatten()
        w[idx] = Simulator(name).drag_weights(cond["drag"][idx])
    k = 2 * (cond["log_k"] - STIFFNESS[0]) / (STIFFNESS[1] - STIFFNESS[0]) - 1
    glob = torch.cat([cond["force"] / FORCE[1], k[:, None]], 1)[:, None].expand(-1, POINTS, -1)
    return torch.cat([p0, w[..., None], glob], -1).float()


def load_springs(frames, n_train, n_test, seed=0, root=None):
    """The data set: x = displacements from frame 0 (n, frames - 1, N, 3), c = pack(...), the conditions and
    the trajectories themselves; train and test from their own generators (seed, seed + 1), each simulated
    once and cached under a name that changes with the simulator's constants."""
    physics = repr((POINTS, FPS, SUBSTEPS, FORCE_FRAMES, GRAVITY, RESTITUTION, FRICTION, DAMPING, SPACING, STIFFNESS,
                    FORCE, ELEVATION, HELDOUT_AZIMUTH, HELDOUT_STIFFNESS, SHAPES))
    tag = hashlib.sha256(physics.encode()).hexdigest()[:8]
    d = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        path = common.cache_dir(root) / "physctrl" / f"springs-{tag}-{split}-f{frames}-n{n}-s{s}.pt"
        if path.exists():
            d[split] = torch.load(path, weights_only=True)
        else:
            t0 = time.time()
            cond = draw_conditions(n, split, torch.Generator().manual_seed(s))
            d[split] = dict(cond, traj=simulate(cond, frames).float())
            path.parent.mkdir(parents=True, exist_ok=True)
            common.atomic_save(d[split], path)
            common.log(f"simulated {n} {split} trajectories in {time.time() - t0:.0f}s; cached in {path}")
    x = {s: d[s]["traj"][:, 1:] - d[s]["traj"][:, :1] for s in d}
    c = {s: pack(d[s], d[s]["traj"][:, 0].double()) for s in d}
    zeros = {s: torch.zeros(len(x[s]), dtype=torch.long) for s in d}
    data = common.Dataset("springs", x["train"], zeros["train"], x["test"], zeros["test"], 0,
                          c_train=c["train"], c_test=c["test"])
    return data, d


# -----------------------------------------------------------------------------
# the network: a DiT over (frame, point) tokens, attention across points, then across frames

class TrajectoryDiT(nn.Module):
    """v_theta(x_t, t, c): x_t (B, F-1, N, 3), t (B,), c (B, N, 8) (pack) -> (B, F-1, N, 3). keep (B, 2), 0 or 1:
    whether the force and the stiffness are given (a withheld one is zeroed and flagged). A token is one point
    over `patch` consecutive frames (a tubelet, as video DiTs patch time): (F-1) / patch x N tokens."""

    def __init__(self, frames, width=64, depth=2, heads=4, patch=3):
        super().__init__()
        if (frames - 1) % patch:
            raise common.UserError(f"--frame-patch {patch} must divide the {frames - 1} generated frames (--frames - 1)")
        self.frames, self.patch = frames, patch
        self.inp = nn.Linear(3 * patch + 7, width)  # [x_t over the patch's frames, p_0, w, w f] per token
        first = torch.arange(1, frames, patch).float()  # each token's first frame
        self.register_buffer("frame_pos", common.timestep_embedding(first, width, 100.0), persistent=False)  # (T, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.physics = nn.Sequential(nn.Linear(3 + 1 + 2, width), nn.SiLU(), nn.Linear(width, width))
        self.space = nn.ModuleList(common.DiTBlock(width, heads) for _ in range(depth))  # across the N points
        self.across = nn.ModuleList(common.DiTBlock(width, heads) for _ in range(depth))  # across the T frame patches
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, 3 * patch)
        for m in (self.ada, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x, t, c, keep=None):
        B, _, N, _ = x.shape  # (B, F-1, N, 3)
        T, P = len(self.frame_pos), self.patch
        keep = torch.ones(B, 2, device=x.device) if keep is None else keep
        g = c[:, 0, 4:]  # (B, 4): f, log k
        phys = torch.cat([g[:, :3] * keep[:, :1], g[:, 3:] * keep[:, 1:], keep], 1)
        cond = F.silu(self.time(common.timestep_embedding(1000 * t, self.frame_pos.shape[1]).to(x.dtype))
                      + self.physics(phys))  # (B, width)
        x = x.view(B, T, P, N, 3).transpose(2, 3).reshape(B, T, N, 3 * P)  # tubelets
        point = torch.cat([c[..., :4], c[..., 3:4] * g[:, None, :3] * keep[:, None, :1]], -1)  # p_0, w, w f (B, N, 7)
        h = self.inp(torch.cat([x, point[:, None].expand(-1, T, -1, -1)], -1)) + self.frame_pos[:, None]
        for space, across in zip(self.space, self.across):
            h = space(h.reshape(B * T, N, -1), cond.repeat_interleave(T, 0)).view(B, T, N, -1)  # points of a frame
            h = h.transpose(1, 2).reshape(B * N, T, -1)
            h = across(h, cond.repeat_interleave(N, 0)).view(B, N, T, -1).transpose(1, 2)  # frames of a point
        shift, scale = self.ada(cond)[:, None, None].chunk(2, dim=-1)
        h = self.out(self.norm(h) * (1 + scale) + shift)  # (B, T, N, 3 P)
        return h.view(B, T, N, P, 3).transpose(2, 3).reshape(B, T * P, N, 3)


# -----------------------------------------------------------------------------
# the method: flow matching on trajectories, guidance, withheld stiffness; the MSE regressor

class PhysCtrl:
    """cfm.py's straight path on displacement trajectories, with the physics dropped at random in training
    (p_uncond: all of it, for guidance; p_withhold: the stiffness alone)."""

    def __init__(self, p_uncond=0.1, p_withhold=0.2, predict="v", shift=1.0):
        if not (0 <= p_uncond < 1 and 0 <= p_withhold < 1) or predict not in ("x", "v") or not shift > 0:
            raise ValueError(f"--p-uncond and --p-withhold must be in [0, 1), --predict x or v and --shift > 0, got "
                             f"{p_uncond}, {p_withhold}, {predict} and {shift}")
        self.p_uncond, self.p_withhold, self.predict, self.shift = p_uncond, p_withhold, predict, shift

    def keep(self, B, device):
        """(B, 2) which physics each example keeps: force and stiffness together dropped with p_uncond,
        the stiffness alone with p_withhold."""
        u = torch.rand(B, 2, device=device)
        given = (u[:, :1] >= self.p_uncond).float()
        return torch.cat([given, given * (u[:, 1:] >= self.p_withhold).float()], 1)

    def given(self, B, withhold, device):
        """(B, 2) keep for sampling: the force given, the stiffness given unless withhold."""
        return torch.tensor([[1.0, 0.0 if withhold else 1.0]], device=device).expand(B, -1)

    def velocity(self, net, x, t, c, keep):
        """v_theta = (x1_theta(x_t, t, c) - x_t) / (1 - t) with predict "x" (the network gives the trajectory), or
        the network's output itself with predict "v"."""
        out = net(x, t, c, keep)
        return out if self.predict == "v" else (out - x) / (1 - common.bcast(t, x))

    def loss(self, net, x1, y=None, c=None):
        """x_t = (1 - t) x_0 + t x_1; predict "v": E || v_theta - (x_1 - x_0) ||^2; predict "x": E || x1_theta - x_1 ||^2
        (the same loss weighted by (1 - t)^2: v_theta - (x_1 - x_0) = (x1_theta - x_1) / (1 - t)); y is unused. The path
        carries the trajectories divided by the shift K (the sampler multiplies by K on the way out)."""
        x1 = x1 / self.shift
        x0, t = torch.randn_like(x1), torch.rand(len(x1), device=x1.device)
        x_t = (1 - common.bcast(t, x1)) * x0 + common.bcast(t, x1) * x1
        target = x1 - x0 if self.predict == "v" else x1
        return (net(x_t, t, c, self.keep(len(x1), x1.device)) - target).pow(2).mean()

    def regression_loss(self, net, x1, y=None, c=None):
        """The baseline: the same network at x = 0, t = 0 trained to output x_1 itself (MSE): the conditional mean."""
        zero = torch.zeros_like(x1)
        return (net(zero, torch.zeros(len(x1), device=x1.device), c, self.keep(len(x1), x1.device)) - x1).pow(2).mean()

    @torch.no_grad()
    def sample(self, net, c, steps=10, cfg_scale=1.0, withhold=False, generator=None, noise=None):
        """Trajectories (B, F-1, N, 3) given c: dx/dt = v from x_0 ~ N(0, I) at t = 0 to t = 1, midpoint steps, times
        the shift K; guidance v_null + w (v_c - v_null); withhold: the stiffness not given."""
        B = len(c)
        x = common.start_noise((B, net.frames - 1, POINTS, 3), generator, noise).to(c.device)
        keep = self.given(B, withhold, c.device)
        null = torch.zeros_like(keep)

        def v(x, t):
            t = torch.full((B,), t, device=x.device)
            if cfg_scale == 1.0:
                return self.velocity(net, x, t, c, keep)
            v_null = self.velocity(net, x, t, c, null)
            return v_null + cfg_scale * (self.velocity(net, x, t, c, keep) - v_null)
        h = 1.0 / steps
        for i in range(steps):
            x = x + h * v(x + h / 2 * v(x, i * h), i * h + h / 2)
        return x * self.shift  # the path's units back to the simulator's

    @torch.no_grad()
    def regress(self, net, c, withhold=False):
        """The regressor's one answer (B, F-1, N, 3) given c: its network at x = 0, t = 0."""
        keep = self.given(len(c), withhold, c.device)
        return net(torch.zeros(len(c), net.frames - 1, POINTS, 3, device=c.device), torch.zeros(len(c), device=c.device),
                   c, keep)


# -----------------------------------------------------------------------------
# evaluation against the simulator, the baselines, the withheld-stiffness check, tracks and pictures

def with_frame0(x, c):
    """Positions (B, F, N, 3): frame 0 (c's first three values) then frame 0 + the displacements x."""
    p0 = c[..., :3].to(x.dtype)[:, None]
    return torch.cat([p0, p0 + x], 1)


def errors(gen, sim, shape):
    """Per trajectory (n,) figures of generated positions gen against simulated sim (n, F, N, 3): the mean
    position error at the last frame, over frames and per frame (n, F), the Chamfer distance at the last frame,
    the spring-length error (mean |l_gen - l_sim| over springs and frames) and the ground penetration (mean
    max(0, -z))."""
    gen, sim = gen.double().cpu(), sim.double().cpu()
    dist = (gen - sim).norm(dim=-1).mean(-1)  # (n, F)
    d = torch.cdist(gen[:, -1], sim[:, -1])
    chamfer = (d.min(2).values.mean(1) + d.min(1).values.mean(1)) / 2
    spring = torch.empty(len(gen), dtype=torch.float64)
    for s, name in enumerate(SHAPES):
        idx = (shape == s).nonzero().flatten()
        i, j = Simulator(name).pairs.unbind(1)
        length = lambda p: (p[:, :, j] - p[:, :, i]).norm(dim=-1)  # noqa: E731
        spring[idx] = (length(gen[idx]) - length(sim[idx])).abs().mean((1, 2))
    return {"last": dist[:, -1], "mean": dist[:, 1:].mean(1), "chamfer": chamfer, "spring": spring,
            "ground": (-gen[..., 2]).clamp_min(0).mean((1, 2)), "per_frame": dist}


def ballistic(cond, p0, frames, v0=None):
    """The rigid baseline (n, F, N, 3): the shape translated rigidly (no rotation, no deformation)
    with its centre of mass, treated as one point of the object's mass 1 under the simulator's
    rules: the force for the first FORCE_FRAMES frames, gravity, symplectic Euler at the
    simulator's h, and Simulator.contact's ground (restitution e, Coulomb friction mu) at the
    centre's starting height (the shape's lowest points on z = 0). v0 (n, 3): a starting velocity
    (default: rest). For a body flying free it is the simulator's centre of mass exactly (the
    internal forces cancel); for a body sliding flat on the ground, the same to the integrator's
    order: the points' friction impulses add up to mu times their normal impulses, which average
    the weight less the lift, as the one point's do (decelerating at mu (g - f_z)). Where the body
    tips, rolls or bounces on some of its points the simulator's springs spread the impulses, which
    a point does not. Corrected: this baseline used to slide on the ground without friction, though
    most held-out forces lift by less than gravity."""
    n, h = len(p0), 1.0 / (FPS * SUBSTEPS)
    g = torch.tensor([0.0, 0.0, -GRAVITY], dtype=torch.float64)[:, None, None]  # (3, 1, 1)
    push = cond["force"].double().T[..., None] + g  # (3, n, 1): the force (mass 1) and gravity
    d = torch.zeros(3, n, 1, dtype=torch.float64)  # the centre's displacement from frame 0
    v = torch.zeros_like(d) if v0 is None else v0.double().T[..., None].clone()
    out = [d]
    for frame in range(1, frames):
        a = push if frame <= FORCE_FRAMES else g
        for _ in range(SUBSTEPS):
            v = v + h * a
            d, v = Simulator.contact(d + h * v, v)  # the ground: d_z >= 0
        out.append(d)
    d = torch.stack(out)[..., 0].permute(2, 0, 1)  # (n, F, 3)
    return p0.double()[:, None] + d[:, :, None]


def fit_stiffness(traj, cond, grid=11):
    """log10 k (n,) of trajectories (n, F, N, 3): the grid value over STIFFNESS whose simulation of the same
    shape, drag point and force is nearest (mean position error over frames and points), and that error (n,):
    how far the trajectory is from every simulated one."""
    n, frames = traj.shape[:2]
    ks = torch.linspace(*STIFFNESS, grid, dtype=torch.float64)
    rep = {k: v.repeat_interleave(grid, 0) for k, v in cond.items() if k in ("shape", "drag", "force")}
    rep["log_k"] = ks.repeat(n)
    sims = simulate(rep, frames).view(n, grid, frames, POINTS, 3)
    err = (sims - traj.double().cpu()[:, None]).norm(dim=-1).mean((2, 3))  # (n, grid)
    best = err.min(1)
    return ks[best.indices], best.values


def prior_stiffness(n, generator):
    """log10 k (n,) from the training prior: uniform over STIFFNESS outside HELDOUT_STIFFNESS."""
    out = torch.empty(0, dtype=torch.float64)
    while len(out) < n:
        k = STIFFNESS[0] + (STIFFNESS[1] - STIFFNESS[0]) * torch.rand(2 * n, generator=generator, dtype=torch.float64)
        out = torch.cat([out, k[~heldout(torch.zeros_like(k) + math.pi, k)]])
    return out[:n]


def project(traj, size=CANVAS):
    """Tracks (n, F, N, 2) in pixels (x right, y down) and visibility (n, F, N) of positions
    (n, F, N, 3) seen by a pinhole camera at CAMERA = (0, -D, H) looking along +y, its focal length
    FOCAL canvas widths: u = size / 2 + FOCAL size x / (y + D), v = size / 2 - FOCAL size (z - H) /
    (y + D), so the canvas [0, size)^2 sees x in [-2, 2), z in (-1, 3] at y = 0 (D = 6, H = 1,
    FOCAL = 1.5: a half-width D / (2 FOCAL) = 2): every point of every shape at frame 0 (corrected:
    with a focal length of 3 widths it saw x in [-1, 1), z in (0, 2], the ground's points outside,
    while this sentence claimed the view above). Visible when inside the image and no point within
    half a pixel is nearer the camera by more than half a spacing."""
    traj = traj.double().cpu()
    depth = traj[..., 1] - CAMERA[1]
    f = FOCAL * size
    uv = torch.stack([size / 2 + f * (traj[..., 0] - CAMERA[0]) / depth,
                      size / 2 - f * (traj[..., 2] - CAMERA[2]) / depth], -1)
    inside = ((uv >= 0) & (uv < size)).all(-1)
    near = torch.cdist(uv.flatten(0, 1), uv.flatten(0, 1)).view(*uv.shape[:3], -1) < 0.5  # (n, F, N, N)
    nearer = depth[..., None, :] < depth[..., :, None] - SPACING / 2
    return uv.float(), inside & ~(near & nearer).any(-1)


def save_tracks(traj, path):
    tracks, visible = project(traj)
    common.atomic_save({"tracks": tracks, "visible": visible, "size": (CANVAS, CANVAS), "fps": FPS}, path)


def side_view(rows, path, cols=6, cell=(40, 80)):
    """A picture of trajectories from the side (x right, z up; x in [-2, 2], z in [-0.2, 1.8]): one row per
    trajectory, `cols` frames spread over 0..F-1; rows is a list of (trajectories (n, F, N, 3), RGB) drawn
    in order, e.g. the simulated in grey under the generated in orange."""
    n, frames = rows[0][0].shape[:2]
    H, W = cell
    idx = torch.linspace(0, frames - 1, cols).round().long()
    img = np.full((n * (H + 2) + 2, cols * (W + 2) + 2, 3), 255, np.uint8)
    for r in range(n):
        for ci, f in enumerate(idx.tolist()):
            y0, x0 = 2 + r * (H + 2), 2 + ci * (W + 2)
            img[y0:y0 + H, x0:x0 + W] = 16
            img[y0 + H - 1 - int(0.2 / 2.0 * H), x0:x0 + W] = 90  # the ground
            for traj, rgb in rows:
                p = traj[r, f].double().cpu().numpy()
                u = np.clip(((p[:, 0] + 2.0) / 4.0 * W).astype(int), 0, W - 1)
                v = np.clip((H - 1 - (p[:, 2] + 0.2) / 2.0 * H).astype(int), 0, H - 1)
                img[y0 + v, x0 + u] = rgb
    common.write_png(path, img)


def row_figures(traj, sim, shape):
    """One row of the evaluation's table (as the results files keep it): errors' figures averaged
    over the trajectories, the last-frame error's standard error and per-trajectory values, and the
    mean position error per frame."""
    e = errors(traj, sim, shape)
    per_frame = e.pop("per_frame").mean(0).tolist()
    return {k: float(v.mean()) for k, v in e.items()} | {
        "last_se": float(e["last"].std() / len(e["last"]) ** 0.5), "last_each": e["last"].tolist(),
        "per_frame": per_frame}


def evaluate(method, net, regressor, data, sets, args, device):
    """Position error, Chamfer, spring and ground figures on held-out conditions for the flow, the regressor and
    the two rigid baselines; then the withheld-stiffness check. Prints the table; returns the figures."""
    n = args.n_eval
    c, test = data.c_test[:n].to(device), {k: v[:n] for k, v in sets["test"].items()}
    sim = test["traj"].double()
    noise = torch.randn((n, args.frames - 1, POINTS, 3), generator=torch.Generator().manual_seed(args.seed + 1))
    t0 = time.time()
    with common.autocast(device, args.amp):
        gen = with_frame0(method.sample(net, c, args.steps, args.cfg_scale, noise=noise.to(device)).float(), c).cpu()
    q = {"sample_seconds": time.time() - t0, "n": n}
    rows = {"flow": gen, "static": sim[:, :1].expand_as(sim), "ballistic": ballistic(test, sim[:, 0], args.frames)}
    if regressor is not None:
        rows["regressor"] = with_frame0(method.regress(regressor, c).float(), c).cpu()
    common.log(f"held-out conditions (n={n}; unseen force directions or stiffnesses), against the simulator:")
    common.log(f"  {'':10s} {'last frame':>12s} {'all frames':>12s} {'chamfer':>9s} {'springs':>9s} {'ground':>8s}")
    for name, traj in rows.items():
        q[name] = r = row_figures(traj, sim, test["shape"])
        common.log(f"  {name:10s} {r['last']:7.4f}+-{r['last_se']:.3f} {r['mean']:12.4f} "
                   f"{q[name]['chamfer']:9.4f} {q[name]['spring']:9.4f} {q[name]['ground']:8.4f}")
    q["ratio_ballistic"] = q["flow"]["last"] / q["ballistic"]["last"]
    out = Path(args.out)
    k = min(8, n)
    side_view([(sim[:k], (150, 150, 150)), (gen[:k], (255, 140, 0))], out / "trajectories.png")
    save_tracks(gen[:16], out / "tracks.pt")
    common.log(f"  flow / ballistic at the last frame: {q['ratio_ballistic']:.3f}; picture {out / 'trajectories.png'} "
               f"(simulated grey, generated orange); tracks {out / 'tracks.pt'}")
    if args.n_withhold:
        q["withheld"] = withheld_check(method, net, regressor, data, sets, args, device)
    return q


def withheld_check(method, net, regressor, data, sets, args, device):
    """Generate with the stiffness withheld on n held-out force conditions, fit log k to each trajectory by the
    simulator, and compare with the fits of trajectories simulated at stiffnesses from the prior (two-sample
    Kolmogorov-Smirnov; passes when p > 0.05). Beside it the fit's residual (mean position error to the nearest
    simulated trajectory): a distribution of stiffnesses only counts from trajectories the simulator can explain."""
    from scipy.stats import ks_2samp
    n = args.n_withhold
    c, test = data.c_test[:n].to(device), {k: v[:n] for k, v in sets["test"].items()}
    g = torch.Generator().manual_seed(args.seed + 2)
    prior = dict(test, log_k=prior_stiffness(n, g))
    reference, _ = fit_stiffness(simulate(prior, args.frames), prior)
    noise = torch.randn((n, args.frames - 1, POINTS, 3), generator=g).to(device)
    trajs = {"flow": with_frame0(method.sample(net, c, args.steps, args.cfg_scale, withhold=True, noise=noise), c)}
    if regressor is not None:
        trajs["regressor"] = with_frame0(method.regress(regressor, c, withhold=True), c)
    q = {"reference": {"mean": float(reference.mean()), "sd": float(reference.std()), "fits": reference.tolist()}}
    for name, traj in trajs.items():
        fit, residual = fit_stiffness(traj.float().cpu(), test)
        ks = ks_2samp(fit.numpy(), reference.numpy())
        q[name] = {"mean": float(fit.mean()), "sd": float(fit.std()), "residual": float(residual.mean()), "ks": float(ks.statistic),
                   "p": float(ks.pvalue), "passes": bool(ks.pvalue > 0.05), "fits": fit.tolist()}
    common.log(f"stiffness withheld (n={n}): log10 k fitted by the simulator, prior's fits {q['reference']['mean']:.2f} "
               f"+- {q['reference']['sd']:.2f}; " + "; ".join(
                   f"{k} {v['mean']:.2f} +- {v['sd']:.2f} (fit's residual {v['residual']:.3f}; KS {v['ks']:.2f}, p = {v['p']:.3g}: "
                   f"{'passes' if v['passes'] else 'fails'})" for k, v in q.items() if k != "reference"))
    return q


# -----------------------------------------------------------------------------
# the training script

def one_condition(args):
    """The conditions dict of --shape, --drag, --force and --stiffness (one trajectory's), checked against the
    simulated ranges: a UserError names what is outside."""
    f = torch.tensor([args.force], dtype=torch.float64)
    size = float(f.norm())
    elevation = math.asin(max(-1.0, min(1.0, float(f[0, 2]) / size))) if size > 0 else 0.0
    if not FORCE[0] <= size <= FORCE[1] or not ELEVATION[0] <= elevation <= ELEVATION[1]:
        raise common.UserError(f"--force {' '.join(map(str, args.force))}: |f| = {size:.3g} and elevation {elevation:.3g} "
                               f"rad; the simulated range is |f| in {FORCE}, elevation in {ELEVATION} rad")
    if not STIFFNESS[0] <= args.stiffness <= STIFFNESS[1]:
        raise common.UserError(f"--stiffness {args.stiffness} is outside the simulated log10 k range {STIFFNESS}")
    if not 0 <= args.drag < POINTS:
        raise common.UserError(f"--drag {args.drag}: the drag point is a point index in 0..{POINTS - 1}")
    return {"shape": torch.tensor([SHAPES.index(args.shape)]), "drag": torch.tensor([args.drag]), "force": f,
            "log_k": torch.tensor([args.stiffness], dtype=torch.float64)}


def main(argv=None):
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("physctrl (--data springs only; --width is the DiT's hidden size)")
    own.add_argument("--frames", type=int, help="F, frames per trajectory, frame 0 given (default 16)")
    own.add_argument("--n-train", type=int, help="simulated training trajectories (default 2000)")
    own.add_argument("--frame-patch", type=int, help="frames per token (a tubelet); must divide --frames - 1 (default 3)")
    own.add_argument("--depth", type=int, help="pairs of blocks (across points, across frames) (default 2)")
    own.add_argument("--heads", type=int, help="attention heads (default 4)")
    own.add_argument("--steps", type=int, help="midpoint steps of the sampler (default 10)")
    own.add_argument("--predict", choices=["x", "v"], help="the network gives the velocity (v, the default) or "
                     "the trajectory x_1 (x)")
    own.add_argument("--shift", type=common.finite, help="K: the path carries the trajectories divided by K, so that "
                     "noise dominates longer (SD3's time shift; default 1)")
    own.add_argument("--p-withhold", type=common.finite, help="probability of dropping the stiffness in training (default 0.2)")
    own.add_argument("--regressor-iters", type=int, help="iterations of the MSE regressor baseline (default --iters / 2; 0: none)")
    own.add_argument("--n-withhold", type=int, help="held-out conditions of the withheld-stiffness check (default 64; 0: off)")
    one = parser.add_argument_group("one condition (instead of the evaluation): 8 trajectories, OUT/condition.png, OUT/tracks.pt")
    one.add_argument("--force", type=common.finite, nargs=3, metavar=("FX", "FY", "FZ"), help="the applied force")
    one.add_argument("--drag", type=int, default=0, help="the drag point's index (default 0)")
    one.add_argument("--stiffness", type=common.finite, default=2.0, help="log10 k (default 2)")
    one.add_argument("--shape", choices=SHAPES, default="box", help="the object (default box)")
    one.add_argument("--withhold", action="store_true", help="generate without the stiffness (the grey simulation "
                     "still uses --stiffness) and print the stiffness fitted to each draw")
    args, ckpt = common.parse_args(
        parser, argv, "physctrl", model_flags=("frames", "frame_patch", "depth", "heads", "predict", "shift"),
        defaults=dict(data="springs", frames=16, frame_patch=3, n_train=2000, depth=2, heads=4, steps=10, predict="v", shift=1.0, p_withhold=0.2,
                      regressor_iters=None, n_withhold=64),
        data_sets={"springs": dict(arch="dit", width=64, iters=800, batch_size=32, lr=2e-3, n_eval=200)})
    if args.arch != "dit":
        parser.error(f"physctrl's network is its own trajectory DiT: --arch {args.arch} does not apply (use dit)")
    if not 3 <= args.frames <= 64 or args.steps < 1 or args.n_train < 1 or args.n_withhold < 0:
        parser.error(f"need --frames in 3..64, --steps >= 1, --n-train >= 1, --n-withhold >= 0; got {args.frames}, "
                     f"{args.steps}, {args.n_train}, {args.n_withhold}")
    if args.frame_patch < 1 or (args.frames - 1) % args.frame_patch:
        parser.error(f"--frame-patch {args.frame_patch} must divide the {args.frames - 1} generated frames (--frames - 1)")
    if args.withhold and not args.force:
        parser.error("--withhold applies to one condition: give it with --force FX FY FZ (and --drag, --shape)")
    if args.n_withhold > args.n_eval:
        parser.error(f"--n-withhold {args.n_withhold} exceeds --n-eval {args.n_eval}: it uses the evaluation's conditions")
    regressor_iters = args.iters // 2 if args.regressor_iters is None else args.regressor_iters
    method = common.construct(parser, PhysCtrl, args.p_uncond, args.p_withhold, args.predict, args.shift)
    with common.session(args) as device:
        condition = one_condition(args) if args.force else None
        if ckpt is not None and ckpt["args"]["frames"] != args.frames:
            raise common.UserError(f"the checkpoint's trajectories have {ckpt['args']['frames']} frames, not "
                                   f"--frames {args.frames}: drop --frames or train a new model")
        data, sets = load_springs(args.frames, args.n_train, max(args.n_eval, N_TEST), root=args.data_root)
        if args.batch_size > len(data.x_train):
            raise common.UserError(f"--batch-size {args.batch_size} exceeds the {len(data.x_train)} simulated "
                                   f"trajectories: use at most {len(data.x_train)} or raise --n-train")
        v_theta = TrajectoryDiT(args.frames, args.width, args.depth, args.heads, args.frame_patch).to(device)  # the flow's field
        regressor = TrajectoryDiT(args.frames, args.width, args.depth, args.heads, args.frame_patch).to(device)  # the MSE baseline
        q, out = {}, Path(args.out) / "regressor"
        if args.sample_only:
            v_theta = common.load_ema(ckpt, v_theta)
            regressor = common.load_ema(common.load_checkpoint(out / "ckpt.pt", ("physctrl_regressor",)), regressor) \
                if (out / "ckpt.pt").exists() and condition is None else None  # the evaluation's baseline only
        else:
            t0, c0 = time.time(), time.process_time()
            v_theta = common.train(v_theta, method.loss, data, args, ckpt)  # L_CFM on trajectories; the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
            if regressor_iters:
                out.mkdir(exist_ok=True)
                r_args = argparse.Namespace(**{**vars(args), "model": "physctrl_regressor", "out": str(out),
                                               "iters": regressor_iters})
                r_ckpt = common.load_checkpoint(out / "ckpt.pt", ("physctrl_regressor",)) \
                    if args.resume and (out / "ckpt.pt").exists() else None
                t0, c0 = time.time(), time.process_time()
                regressor = common.train(regressor, method.regression_loss, data, r_args, r_ckpt)  # MSE to x_1
                q.update(regressor_train_seconds=time.time() - t0, regressor_train_cpu_seconds=time.process_time() - c0)
            else:
                regressor = None
        if not common.is_main():
            return None
        if condition is not None:  # 8 trajectories of one condition, beside its simulation
            p0 = Simulator(args.shape).p0[None]
            c = pack(condition, p0).expand(8, -1, -1).to(device)
            g = torch.Generator().manual_seed(args.seed + 1)
            gen = with_frame0(method.sample(v_theta, c, args.steps, args.cfg_scale, withhold=args.withhold,
                                            generator=g).float(), c).cpu()
            sim = simulate(condition, args.frames)
            side_view([(sim.expand(8, -1, -1, -1), (150, 150, 150)), (gen, (255, 140, 0))], Path(args.out) / "condition.png")
            save_tracks(gen, Path(args.out) / "tracks.pt")
            e = errors(gen, sim.expand(8, -1, -1, -1), condition["shape"].expand(8))
            common.log(f"one condition ({args.shape}, drag {args.drag}, f {args.force}, log10 k {args.stiffness}): last-frame "
                       f"error {float(e['last'].mean()):.4f}; {args.out}/condition.png, {args.out}/tracks.pt")
            if args.withhold:  # the draws' stiffnesses, fitted by the simulator: the withheld k's distribution
                fit, _ = fit_stiffness(gen, {k: v.expand(8, *v.shape[1:]) for k, v in condition.items()})
                common.log(f"  stiffness withheld: log10 k fitted to the 8 draws {', '.join(f'{k:.2f}' for k in fit.tolist())} "
                           f"(the grey simulation's {args.stiffness})")
            return q | {"last": float(e["last"].mean())}
        if args.n_eval == 0:
            return q or None
        return q | evaluate(method, v_theta, regressor, data, sets, args, device)


if __name__ == "__main__":
    main()
