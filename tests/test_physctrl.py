"""physctrl.py: the simulator against closed forms, the network's symmetry, the sampler against the exact
answer for Gaussian projectiles, the baselines, the tracks, and the command line."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import physctrl as pc
from test_cli import expect_exit_2, tensors

G = torch.tensor([0.0, 0.0, -pc.GRAVITY], dtype=torch.float64)


def layout(x):  # (B, N, 3) -> the simulator's (3, B, N)
    return x.permute(2, 0, 1).contiguous()


# ---- the simulator

@settings(deadline=None, max_examples=10)
@given(st.sampled_from(pc.SHAPES), st.floats(-3, 3), st.floats(-3, 3), st.floats(0, 5), st.floats(1.0, 2.5))
def test_free_fall_is_the_integrators_discrete_parabola(shape, vx, vy, vz, log_k):
    """Every point thrown with the same v_0 and no ground: the springs stay at rest, and after n steps of h
    p_n = p_0 + n h v_0 + g h^2 n (n + 1) / 2, symplectic Euler's form of p_0 + v_0 t + g t^2 / 2."""
    sim = pc.Simulator(shape, ground=False)
    v0 = torch.tensor([vx, vy, vz], dtype=torch.float64)
    traj = sim.run(torch.tensor([10 ** log_k], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
                   torch.tensor([0]), 6, v=v0.expand(1, pc.POINTS, 3))
    h = 1.0 / (pc.FPS * pc.SUBSTEPS)
    n = torch.arange(6, dtype=torch.float64)[:, None, None] * pc.SUBSTEPS
    want = sim.p0 + n * h * v0 + G * h ** 2 * n * (n + 1) / 2
    assert torch.allclose(traj[0], want, atol=1e-10, rtol=0)


def random_state(shape, seed):
    g = torch.Generator().manual_seed(seed)
    sim = pc.Simulator(shape, gravity=0.0, damping=0.0, ground=False)
    p = sim.p0[None] + 0.03 * torch.randn(1, pc.POINTS, 3, generator=g, dtype=torch.float64)
    v = torch.randn(1, pc.POINTS, 3, generator=g, dtype=torch.float64)
    return sim, p, v


@pytest.mark.parametrize("shape", pc.SHAPES)
def test_momentum_is_conserved_exactly(shape):
    """No gravity, damping, ground or force: F_ij = -F_ji, so the centre of mass moves in a straight line
    at the mean velocity, to round-off, however the springs vibrate."""
    sim, p, v = random_state(shape, 0)
    traj = sim.run(torch.tensor([100.0], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
                   torch.tensor([0]), 8, p=p, v=v)
    t = torch.arange(8, dtype=torch.float64)[:, None] / pc.FPS
    assert torch.allclose(traj[0].mean(1), p[0].mean(0) + t * v[0].mean(0), atol=1e-11, rtol=0)
    assert (traj[0] - traj[0, :1]).abs().max() > 0.1  # the points did move


@pytest.mark.parametrize("shape", pc.SHAPES)
def test_energy_is_kept_to_the_integrators_order(shape):
    """Symplectic Euler keeps the energy (kinetic + spring) within O(h) without drift: halving h halves the
    largest deviation over the same time (the ratio near 2), and it is small."""
    sim, p, v = random_state(shape, 1)
    k, m = torch.tensor([100.0], dtype=torch.float64), 1.0 / pc.POINTS

    def deviation(steps):
        h, P, V = 0.5 / steps, layout(p), layout(v)
        energy = []
        for _ in range(steps):
            d = P @ sim.DT
            energy.append(float(m * (V * V).sum() / 2 + k * ((d * d).sum(0).sqrt() - sim.rest).pow(2).sum() / 2))
            P, V = sim.step(P, V, k, torch.zeros_like(P), h)
        e = torch.tensor(energy)
        return float((e - e[0]).abs().max() / e[0])
    coarse, fine = deviation(2000), deviation(4000)
    assert fine < 0.02 and 1.6 < coarse / fine < 2.5, (coarse, fine)


@pytest.mark.parametrize("shape", pc.SHAPES)
def test_springs_at_rest_stay_at_rest(shape):
    sim = pc.Simulator(shape, gravity=0.0, ground=False)
    traj = sim.run(torch.tensor([300.0], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64), torch.tensor([3]), 5)
    assert torch.equal(traj[0], sim.p0.expand(5, -1, -1))


def test_shapes_are_connected_and_on_the_ground():
    for shape in pc.SHAPES:
        sim = pc.Simulator(shape)
        adj = torch.zeros(pc.POINTS, pc.POINTS, dtype=torch.bool)
        adj[sim.pairs[:, 0], sim.pairs[:, 1]] = True
        reach = torch.eye(pc.POINTS, dtype=torch.bool)
        for _ in range(pc.POINTS):
            reach = reach | (reach.float() @ (adj | adj.T).float() > 0)
        assert reach.all(), shape
        assert sim.p0[:, 2].min() == 0 and sim.p0.shape == (pc.POINTS, 3)


def test_the_ground_holds_and_the_force_moves():
    """On the ground the object never goes below z = 0; a force pushes its centre of mass its way."""
    sim = pc.Simulator("box")
    f = torch.tensor([[10.0, 0.0, 4.0], [-10.0, 0.0, 4.0]], dtype=torch.float64)
    traj = sim.run(torch.full((2,), 100.0, dtype=torch.float64), f, torch.tensor([5, 5]), 10)
    assert traj[..., 2].min() >= 0
    dx = traj[:, -1, :, 0].mean(1) - traj[:, 0, :, 0].mean(1)
    assert dx[0] > 0.2 and dx[1] < -0.2


def test_the_ballistic_baseline_is_the_centre_of_mass_without_ground():
    """Internal forces cancel: with forces that lift the objects (the ground idle for the baseline's
    centre, above its start at every frame), the simulated centre of mass without a ground follows
    the force and gravity as the rigid baseline's does, to round-off (the same integrator)."""
    cond = {"shape": torch.tensor([0, 1, 2]), "drag": torch.tensor([0, 7, 20]),
            "force": torch.tensor([[3.0, 1.0, 15.0], [-2.0, 5.0, 14.0], [0.0, -4.0, 15.5]],
                                  dtype=torch.float64),
            "log_k": torch.tensor([1.2, 2.0, 2.4], dtype=torch.float64)}
    sims = torch.stack([pc.Simulator(pc.SHAPES[s], ground=False).run(
        10 ** cond["log_k"][i:i + 1], cond["force"][i:i + 1], cond["drag"][i:i + 1], 8)[0]
        for i, s in enumerate(cond["shape"].tolist())])
    base = pc.ballistic(cond, sims[:, 0], 8)
    assert (base[:, 1:, :, 2] > sims[:, :1, :, 2]).all()  # the baseline's ground is idle
    assert torch.allclose(sims.mean(2), base.mean(2), atol=1e-9, rtol=0)


@pytest.mark.parametrize("v0", [(2.0, 0.0), (1.2, -1.6)])
def test_a_box_sliding_on_the_ground_decelerates_at_mu_g(v0):
    """A stiff box set sliding flat on the ground at speed u: the simulator's centre of mass and the
    rigid baseline's both follow s(t) = u t - mu g t^2 / 2 along v0 until they stop at
    t = u / (mu g) (Coulomb friction under the weight)."""
    v0 = torch.tensor([*v0, 0.0], dtype=torch.float64)
    traj = pc.Simulator("box").run(torch.tensor([10 ** 2.5], dtype=torch.float64),
                                   torch.zeros(1, 3, dtype=torch.float64), torch.tensor([0]), 16,
                                   v=v0.expand(1, pc.POINTS, 3))
    rest = {"force": torch.zeros(1, 3, dtype=torch.float64)}
    base = pc.ballistic(rest, traj[:, 0], 16, v0=v0[None])
    u, decel = float(v0.norm()), pc.FRICTION * pc.GRAVITY
    t = (torch.arange(16, dtype=torch.float64) / pc.FPS).clamp(max=u / decel)
    want = (u * t - decel * t ** 2 / 2)[:, None] * v0 / u  # (F, 3)
    for name, x in (("simulator", traj[0]), ("baseline", base[0])):
        centre = x.mean(1) - x[0].mean(0)
        assert (centre - want).abs().max() < 5e-3, (name, (centre - want).abs().max())


def test_fit_stiffness_recovers_the_simulated_stiffness():
    """Trajectories simulated at stiffnesses on the fit's grid are fitted back exactly (residual 0);
    one between two grid values is fitted to one of its two neighbours, with a residual."""
    ks = torch.linspace(*pc.STIFFNESS, 11, dtype=torch.float64)
    cond = {"shape": torch.tensor([0, 1, 2, 0]), "drag": torch.tensor([3, 10, 20, 5]),
            "force": torch.tensor([[8.0, 0.0, 6.0], [0.0, -8.0, 6.0], [-6.0, 6.0, 8.0],
                                   [6.0, 6.0, 6.0]], dtype=torch.float64),
            "log_k": torch.cat([ks[[1, 5, 9]], (ks[4:5] + ks[5:6]) / 2])}
    fit, residual = pc.fit_stiffness(pc.simulate(cond, 8), cond)
    assert torch.allclose(fit[:3], cond["log_k"][:3], atol=1e-12) and (residual[:3] < 1e-12).all()
    assert fit[3] in (ks[4], ks[5]) and residual[3] > 1e-6, (fit, residual)


def test_the_prior_stiffness_keeps_out_the_held_out_band():
    """prior_stiffness draws log10 k uniformly over STIFFNESS less HELDOUT_STIFFNESS: none in the
    band, the rest uniform (Kolmogorov-Smirnov against that distribution)."""
    from scipy.stats import kstest
    k = pc.prior_stiffness(20000, torch.Generator().manual_seed(0))
    (lo, hi), (b0, b1) = pc.STIFFNESS, pc.HELDOUT_STIFFNESS
    assert len(k) == 20000 and k.min() >= lo and k.max() <= hi
    assert not ((k >= b0) & (k < b1)).any()
    width = (hi - lo) - (b1 - b0)
    cdf = lambda x: (np.minimum(x, b0) - lo + np.maximum(x - b1, 0)) / width  # noqa: E731
    assert kstest(k.numpy(), cdf).pvalue > 1e-3


def test_the_dashpot_is_the_damped_oscillator_of_two_masses():
    """Two free masses m = 1/2 joined by one spring (no gravity, ground or force), stretched by a
    and let go while both move at v: the centre moves at v in a straight line, damping and all,
    and the stretch x obeys (m / 2) x'' = -k x - c x', c = 2 zeta sqrt(k m): with w0 = sqrt(2 k / m)
    and the ratio r = c / (2 sqrt(k m / 2)) = sqrt(2) zeta, x = a e^(-r w0 t) (cos w_d t +
    r w0 / w_d sin w_d t), w_d = w0 sqrt(1 - r^2); not the oscillator of ratio zeta, nor an
    undamped one (256 substeps a frame: the integrator's O(h) error well below the gaps)."""
    L, a, k, zeta = pc.SPACING, 0.05, 100.0, pc.DAMPING
    sim = pc.Simulator(torch.tensor([[0.0, 0.0, 0.0], [L, 0.0, 0.0]]), gravity=0.0, ground=False)
    assert len(sim.pairs) == 1
    v = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    p = torch.tensor([[[0.0, 0.0, 0.0], [L + a, 0.0, 0.0]]], dtype=torch.float64)
    traj = sim.run(torch.tensor([k], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
                   torch.tensor([0]), 10, substeps=256, p=p, v=v.expand(1, 2, 3))[0]  # (F, 2, 3)
    t = torch.arange(10, dtype=torch.float64) / pc.FPS
    assert torch.allclose(traj.mean(1), p[0].mean(0) + t[:, None] * v, atol=1e-12, rtol=0)
    x = (traj[:, 1] - traj[:, 0]).norm(dim=-1) - L
    w0 = math.sqrt(2 * k / 0.5)

    def oscillator(r):
        wd = w0 * math.sqrt(1 - r ** 2)
        return a * torch.exp(-r * w0 * t) * (torch.cos(wd * t) + r * w0 / wd * torch.sin(wd * t))
    err = lambda r: float((x - oscillator(r)).abs().max())  # noqa: E731
    assert err(math.sqrt(2) * zeta) < 0.01 * a, err(math.sqrt(2) * zeta)
    assert err(zeta) > 0.1 * a and err(0.0) > 0.5 * a, (err(zeta), err(0.0))


def test_held_out_conditions_are_never_trained_on():
    g = torch.Generator().manual_seed(0)
    train, test = pc.draw_conditions(2000, "train", g), pc.draw_conditions(500, "test", g)
    az = lambda c: torch.atan2(c["force"][:, 1], c["force"][:, 0]) % (2 * math.pi)  # noqa: E731
    assert not pc.heldout(az(train), train["log_k"]).any() and pc.heldout(az(test), test["log_k"]).all()
    size = train["force"].norm(dim=1)
    assert size.min() >= pc.FORCE[0] and size.max() <= pc.FORCE[1]


# ---- the network and the sampler

def busy_net(frames=7, seed=0):
    """A TrajectoryDiT with every weight random (its zero-initialised gates and output too): not trivially 0."""
    torch.manual_seed(seed)
    net = pc.TrajectoryDiT(frames, width=16, depth=1, heads=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def conditions(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = pc.draw_conditions(B, "train", g)
    p0 = torch.stack([pc.shape_points(pc.SHAPES[s]) for s in cond["shape"].tolist()])
    return pc.pack(cond, p0)


def test_permuting_the_points_permutes_the_output():
    net, c = busy_net(), conditions(3)
    x, t = torch.randn(3, 6, pc.POINTS, 3), torch.rand(3)
    perm = torch.randperm(pc.POINTS)
    out = net(x, t, c)
    assert out.abs().mean() > 1e-2
    assert torch.allclose(net(x[:, :, perm], t, c[:, perm]), out[:, :, perm], atol=1e-5)


def test_a_withheld_stiffness_is_not_seen():
    """keep = (1, 0): the output does not depend on log k; keep = (1, 1): it does."""
    net, c = busy_net(), conditions(2)
    other = c.clone()
    other[..., 7] = -c[..., 7]
    x, t = torch.randn(2, 6, pc.POINTS, 3), torch.rand(2)
    withheld = torch.tensor([[1.0, 0.0]]).expand(2, -1)
    assert torch.equal(net(x, t, c, withheld), net(x, t, other, withheld))
    assert not torch.allclose(net(x, t, c), net(x, t, other), atol=1e-4)


class ExactField(torch.nn.Module):
    """The optimal network of the straight path to Gaussian data N(mu, Sigma) (flattened): predict "x",
    E[x_1 | x_t] = mu + t Sigma C_t^-1 (x_t - t mu), C_t = (1-t)^2 I + t^2 Sigma; predict "v", the velocity
    v(x, t) = (E[x_1 | x_t] - x_t) / (1 - t)."""

    def __init__(self, frames, mu, sigma, predict):
        super().__init__()
        self.frames, self.mu, self.sigma, self.predict = frames, mu, sigma, predict

    def forward(self, x, t, c, keep=None):
        shape, x, t = x.shape, x.flatten(1).double(), float(t[0])
        C = (1 - t) ** 2 * torch.eye(len(self.mu), dtype=torch.float64) + t ** 2 * self.sigma
        mean = self.mu + t * torch.linalg.solve(C, (x - t * self.mu).T).T @ self.sigma
        return (mean if self.predict == "x" else (mean - x) / (1 - t)).view(shape).float()


@pytest.mark.parametrize("predict,shift", [("x", 1.0), ("v", 1.0), ("x", 4.0)])
def test_the_sampler_draws_gaussian_projectiles_exactly(predict, shift):
    """A rigid projectile thrown with v_0 ~ N(m, S) has displacements x_1 = A v_0 + b (the simulator's discrete
    free fall, checked above): Gaussian, mean A m + b, covariance A S A^T. The sampler fed the exact field
    reproduces them, whether the network gives x_1 or the velocity, and with the shift K (the exact field of x_1 / K,
    the end point times K): the displacements lie on the 3-D subspace and the v_0 they imply has mean m and
    covariance S."""
    frames, n = 4, 4000
    sim = pc.Simulator("box", ground=False)
    h = 1.0 / (pc.FPS * pc.SUBSTEPS)
    steps = torch.arange(1, frames, dtype=torch.float64)[:, None, None] * pc.SUBSTEPS
    A = (steps * h * torch.eye(3, dtype=torch.float64)[:, None, None, :]).expand(3, frames - 1, pc.POINTS, 3)
    A = A.reshape(3, -1).T  # (D, 3): column c is the displacement per unit v_0 along c
    b = (G * h ** 2 * steps * (steps + 1) / 2).expand(frames - 1, pc.POINTS, 3).reshape(-1)
    m, L = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64), torch.tensor([[0.6, 0, 0], [0.3, 0.4, 0], [0, -0.2, 0.5]],
                                                                                dtype=torch.float64)
    S = L @ L.T
    v0 = m + torch.randn(5, 3, dtype=torch.float64) @ L.T  # the simulator agrees with x_1 = A v_0 + b
    traj = sim.run(torch.full((5,), 100.0, dtype=torch.float64), torch.zeros(5, 3, dtype=torch.float64), torch.zeros(5, dtype=torch.long),
                   frames, v=v0[:, None].expand(-1, pc.POINTS, -1))
    assert torch.allclose((traj[:, 1:] - traj[:, :1]).flatten(1), v0 @ A.T + b, atol=1e-10)
    field = ExactField(frames, (A @ m + b) / shift, A @ S @ A.T / shift ** 2, predict)
    x = pc.PhysCtrl(predict=predict, shift=shift).sample(field, torch.zeros(n, pc.POINTS, 8), steps=20, generator=torch.Generator().manual_seed(0))
    x = x.flatten(1).double()
    implied = torch.linalg.lstsq(A, (x - b).T).solution.T  # (n, 3)
    assert (x - b - implied @ A.T).abs().max() < 1e-3  # on the subspace
    se = (S.diagonal() / n).sqrt()
    assert ((implied.mean(0) - m).abs() < 4 * se).all(), (implied.mean(0), m)
    assert torch.allclose(implied.T.cov(), S, atol=0.05), implied.T.cov()


@pytest.mark.parametrize("predict", ["x", "v"])
def test_the_shifted_loss_is_the_loss_of_the_shrunk_trajectories(predict):
    """--shift K trains on x_1 / K: the loss of x_1 with K equals the unshifted loss of x_1 / K, draw for draw, and
    differs from the unshifted loss of x_1 (a network whose output is not zero)."""
    torch.manual_seed(0)
    net = pc.TrajectoryDiT(frames=7, width=16, depth=1, heads=2)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x1, c = torch.randn(4, 6, pc.POINTS, 3), torch.randn(4, pc.POINTS, 8)

    def loss(shift, x):
        torch.manual_seed(1)
        return pc.PhysCtrl(predict=predict, shift=shift).loss(net, x, c=c)
    assert torch.equal(loss(4.0, x1), loss(1.0, x1 / 4))
    assert not torch.allclose(loss(4.0, x1), loss(1.0, x1))


class Spy:
    """A stand-in network that records what the loss feeds it and returns a fixed output."""

    def __init__(self):
        self.seen = {}

    def __call__(self, x, t, c, keep=None):
        out = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        self.seen.update(x=x, t=t, c=c, keep=keep, out=out)
        return out


@pytest.mark.parametrize("predict,shift", [("v", 1.0), ("x", 1.0), ("v", 4.0), ("x", 4.0)])
def test_the_loss_feeds_the_straight_path_and_regresses_its_target(predict, shift, monkeypatch):
    """On known x_0 (noise), x_1 (trajectories) and t = 0, 0.3, 0.7, 1 (the draws fixed): the
    network sees x_t = (1 - t) x_0 + t x_1 / K (noise at t = 0, the data over K at t = 1), t and c
    as they are and every physics given; the loss is the mean of (out - target)^2, the target
    x_1 / K - x_0 (predict v) or x_1 / K (predict x)."""
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(2, 4, 6, pc.POINTS, 3, generator=g)
    c, t = torch.randn(4, pc.POINTS, 8, generator=g), torch.tensor([0.0, 0.3, 0.7, 1.0])

    def fixed_rand(*size, **kw):  # t (B,); the physics kept (B, 2): u = 1, everything given
        assert size in ((4,), (4, 2))
        return t.clone() if size == (4,) else torch.ones(size)
    monkeypatch.setattr(torch, "randn_like", lambda x, **kw: x0.clone())
    monkeypatch.setattr(torch, "rand", fixed_rand)
    net = Spy()
    loss = pc.PhysCtrl(predict=predict, shift=shift).loss(net, x1, c=c)
    seen, data = net.seen, x1 / shift
    assert torch.equal(seen["t"], t) and torch.equal(seen["c"], c)
    assert torch.equal(seen["keep"], torch.ones(4, 2))
    tt = t[:, None, None, None]
    assert torch.allclose(seen["x"], (1 - tt) * x0 + tt * data, atol=1e-6, rtol=0)
    assert torch.equal(seen["x"][0], x0[0]) and torch.allclose(seen["x"][3], data[3], atol=1e-7)
    target = data - x0 if predict == "v" else data
    assert torch.allclose(loss, (seen["out"] - target).pow(2).mean(), atol=1e-6, rtol=0)


# ---- tracks and the command line

def test_tracks_centre_and_occlusion():
    """The camera's axis point lands in the image's centre; a point right behind another is hidden."""
    traj = torch.zeros(1, 1, pc.POINTS, 3)
    traj[..., 2] = 1.0  # every point at (0, 0, 1) ...
    traj[0, 0, 1:, 0] = torch.linspace(-1.5, 1.5, pc.POINTS - 1)  # ... but points 1.. spread along x
    traj[0, 0, 1, :] = torch.tensor([0.0, 1.0, 1.0])  # point 1 behind point 0
    uv, visible = pc.project(traj)
    assert torch.allclose(uv[0, 0, 0], torch.tensor([pc.CANVAS / 2, pc.CANVAS / 2]))
    assert visible[0, 0, 0] and not visible[0, 0, 1] and visible[0, 0, 2:].sum() > 10


def test_every_shape_is_in_view_and_the_stated_field_is_the_canvas():
    """Every point of every shape, and of drawn conditions' frame 0, projects inside the canvas; the
    docstring's field at y = 0, x in [-2, 2), z in (-1, 3], is the canvas: its corner (-2, 3) lands
    on pixel (0, 0), the open corner (2, -1) on (size, size), just outside."""
    shapes = torch.stack([pc.shape_points(s) for s in pc.SHAPES])[:, None]  # (3, 1, N, 3)
    cond = pc.draw_conditions(12, "test", torch.Generator().manual_seed(0))
    for traj in (shapes, pc.simulate(cond, 2)[:, :1]):
        uv, _ = pc.project(traj)
        assert ((uv >= 0) & (uv < pc.CANVAS)).all()
    corners = torch.zeros(1, 1, pc.POINTS, 3, dtype=torch.float64)
    corners[0, 0, :4] = torch.tensor([[-2.0, 0, 3], [2, 0, -1], [2 - 1e-6, 0, -1 + 1e-6],
                                      [0, 0, 1]])
    corners[0, 0, 4:, 0] = 100.0  # the rest far outside
    uv, visible = pc.project(corners)
    want = [[0, 0], [pc.CANVAS, pc.CANVAS], [pc.CANVAS, pc.CANVAS], [pc.CANVAS / 2, pc.CANVAS / 2]]
    assert torch.allclose(uv[0, 0, :4], torch.tensor(want, dtype=torch.float32), atol=1e-4)
    assert visible[0, 0, :4].tolist() == [True, False, True, True]


def tiny(out, iters=4):
    return ["--width", "16", "--depth", "1", "--heads", "2", "--batch-size", "8", "--n-train", "32", "--n-eval", "4",
            "--n-withhold", "2", "--steps", "2", "--log-every", "2", "--ckpt-every", "2", "--iters", str(iters),
            "--regressor-iters", str(iters), "--out", str(out)]


def test_resume_is_bit_identical_and_a_run_writes_its_tracks(tmp_path):
    q = pc.main(tiny(tmp_path / "a", 4))
    assert {"flow", "regressor", "static", "ballistic", "withheld"} <= q.keys() and q["train_cpu_seconds"] > 0
    tracks = torch.load(tmp_path / "a" / "tracks.pt", weights_only=True)
    assert tracks["tracks"].shape == (4, 16, pc.POINTS, 2) and tracks["visible"].dtype == torch.bool
    pc.main(tiny(tmp_path / "b", 2))
    pc.main(["--resume", "--iters", "4", "--regressor-iters", "4", "--out", str(tmp_path / "b")])
    for sub in ("", "regressor"):
        (s1, a), (s2, b) = tensors(tmp_path / "a" / sub / "ckpt.pt"), tensors(tmp_path / "b" / sub / "ckpt.pt")
        assert s1 == s2 == 4 and [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("flags, words", [
    (["--force", "0", "0", "40"], "simulated range"),
    (["--force", "10", "0", "0"], "simulated range"),  # along the ground: elevation 0
    (["--force", "5", "0", "5", "--stiffness", "4"], "outside the simulated log10 k range"),
    (["--force", "5", "0", "5", "--drag", "32"], "point index"),
    (["--arch", "unet"], "does not apply"),
    (["--data", "digits"], "unknown data set"),
    (["--batch-size", "64"], "exceeds the 32 simulated"),
    (["--frames", "8"], "must divide the 7 generated frames"),
])
def test_bad_input_gets_one_line(flags, words, capsys, tmp_path):
    expect_exit_2(capsys, pc.main, tiny(tmp_path) + flags, words)
    assert not (tmp_path / "ckpt.pt").exists()


def test_a_checkpoint_of_other_frames_or_model_is_refused(capsys, tmp_path):
    pc.main(tiny(tmp_path / "run", 2) + ["--frames", "7", "--n-eval", "0", "--n-withhold", "0"])
    expect_exit_2(capsys, pc.main, ["--ckpt", str(tmp_path / "run" / "ckpt.pt"), "--frames", "10"], "frames")
    expect_exit_2(capsys, pc.main, ["--ckpt", str(tmp_path / "run" / "regressor" / "ckpt.pt")], "physctrl_regressor checkpoint")


def test_contact_restitution_and_friction():
    """A point below the ground moving down at speed u: put on the ground, bounced at e u, its tangential speed cut
    by mu (1 + e) u (stopped, not reversed, when that is more than it has); a point above or leaving is untouched."""
    sim, u = pc.Simulator("box"), 2.0
    p = layout(torch.tensor([[[0.0, 0.0, -0.01], [0.0, 0.0, -0.01], [0.0, 0.0, 0.5], [0.0, 0.0, -0.01]]], dtype=torch.float64))
    v = layout(torch.tensor([[[3.0, 4.0, -u], [0.1, 0.0, -u], [3.0, 0.0, -u], [1.0, 0.0, 1.0]]], dtype=torch.float64))
    p2, v2 = sim.contact(p, v)
    p2, v2 = p2.permute(1, 2, 0)[0], v2.permute(1, 2, 0)[0]
    cut = pc.FRICTION * (1 + pc.RESTITUTION) * u
    assert torch.allclose(p2[:, 2], torch.tensor([0.0, 0.0, 0.5, 0.0], dtype=torch.float64))
    assert torch.allclose(v2[0], torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64) * (1 - cut / 5) + torch.tensor(
        [0.0, 0.0, pc.RESTITUTION * u], dtype=torch.float64))
    assert torch.allclose(v2[1], torch.tensor([0.0, 0.0, pc.RESTITUTION * u], dtype=torch.float64))
    assert torch.equal(v2[2:], v.permute(1, 2, 0)[0, 2:])


def test_the_flags_are_read_never_written(parsed_flags, tmp_path):
    """The checkpoint records the flags as parsed; what main derives (the regressor's iterations, --iters / 2 when
    not given) it passes on to the regressor's own flags."""
    pc.main(tiny(tmp_path, 4)[:-4] + ["--out", str(tmp_path), "--n-eval", "0", "--n-withhold", "0"])
    [(args, before)] = parsed_flags
    assert vars(args) == before and before["regressor_iters"] is None
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["args"] == before
    regressor = torch.load(tmp_path / "regressor" / "ckpt.pt", weights_only=True)
    assert regressor["step"] == 2 and regressor["args"]["iters"] == 2 and regressor["args"]["model"] == "physctrl_regressor"


def test_sampling_with_the_stiffness_withheld_ignores_it():
    """sample(withhold=True) and regress(withhold=True) give the same answer whatever log k c carries; given, they differ."""
    net, c, m = busy_net(), conditions(2), pc.PhysCtrl()
    other = c.clone()
    other[..., 7] = -c[..., 7]
    noise = torch.randn(2, 6, pc.POINTS, 3)
    assert torch.equal(m.sample(net, c, 2, withhold=True, noise=noise), m.sample(net, other, 2, withhold=True, noise=noise))
    assert torch.equal(m.regress(net, c, withhold=True), m.regress(net, other, withhold=True))
    assert not torch.allclose(m.sample(net, c, 2, noise=noise), m.sample(net, other, 2, noise=noise), atol=1e-4)


def test_one_condition_from_a_checkpoint_ignores_a_foreign_regressor(tmp_path):
    """--ckpt with --force writes 8 trajectories, their picture and tracks into --out, whatever other run's regressor
    that folder holds (the one-condition mode does not use the regressor)."""
    pc.main(tiny(tmp_path / "a", 2) + ["--n-eval", "0", "--n-withhold", "0"])
    pc.main(tiny(tmp_path / "b", 2)[:-2] + ["--width", "24", "--out", str(tmp_path / "b"), "--n-eval", "0", "--n-withhold", "0"])
    q = pc.main(["--ckpt", str(tmp_path / "a" / "ckpt.pt"), "--force", "0", "8", "12", "--drag", "5", "--stiffness", "2",
                 "--out", str(tmp_path / "b")])
    assert q["last"] >= 0 and (tmp_path / "b" / "condition.png").exists()
    assert torch.load(tmp_path / "b" / "tracks.pt", weights_only=True)["tracks"].shape == (8, 16, pc.POINTS, 2)


def test_one_condition_with_the_stiffness_withheld(tmp_path, capsys):
    """--withhold in the one-condition mode samples without the stiffness (other draws from the same noise) and prints
    the stiffness fitted to each of the 8 draws; without --force it is refused in one line."""
    pc.main(tiny(tmp_path / "a", 20) + ["--n-eval", "0", "--n-withhold", "0"])
    one = ["--ckpt", str(tmp_path / "a" / "ckpt.pt"), "--force", "0", "8", "12", "--drag", "5", "--stiffness", "2"]
    pc.main(one + ["--out", str(tmp_path / "given")])
    capsys.readouterr()
    pc.main(one + ["--withhold", "--out", str(tmp_path / "withheld")])
    line = [s for s in capsys.readouterr().out.splitlines() if "stiffness withheld" in s]
    assert len(line) == 1 and len(line[0].split("draws ")[1].split(" (")[0].split(", ")) == 8, line
    tracks = lambda d: torch.load(tmp_path / d / "tracks.pt", weights_only=True)["tracks"]  # noqa: E731
    assert not torch.equal(tracks("given"), tracks("withheld"))
    with pytest.raises(SystemExit) as e:
        pc.main(["--ckpt", str(tmp_path / "a" / "ckpt.pt"), "--withhold", "--out", str(tmp_path / "c")])
    assert e.value.code == 2 and "--withhold" in capsys.readouterr().err
