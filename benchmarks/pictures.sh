#!/usr/bin/env bash
# The pictures in benchmarks/results/img/ that come from runs of the model files, drawn with
# benchmarks/figures.py (pip install -r benchmarks/requirements.txt); run from the repository's root:
#   bash benchmarks/pictures.sh trajectories  # trajectories-2d.png, from `benchmarks/run_all.py --part 2d --seed 0`'s checkpoints
#   bash benchmarks/pictures.sh loss          # loss-2d.png: five 2-D training runs at the command lines' defaults
#   bash benchmarks/pictures.sh strips        # digits-strips.png, from `benchmarks/run_all.py --part digits --seed 0`'s checkpoints
#   bash benchmarks/pictures.sh default       # ddpm-default.png: `python ddpm.py` at its defaults
# The plots of results files need no run: python benchmarks/figures.py nfe (quality-vs-nfe.png) and
# python benchmarks/figures.py compute (quality-vs-compute.png).
set -euo pipefail
S=benchmarks/work/seed0
case "${1:-}" in
trajectories)
  F="--n-eval 0 --trajectory 300"
  python ddpm.py --ckpt $S/2d-ddpm/ckpt.pt $F --out runs/pictures/ddpm
  python ddim.py --ckpt $S/2d-ddpm/ckpt.pt --steps 50 --eta 0 $F --out runs/pictures/ddim
  python cfm.py --ckpt $S/2d-cfm/ckpt.pt --solver euler --steps 20 $F --out runs/pictures/cfm
  python cfm.py --ckpt $S/2d-cfm-ot/ckpt.pt --solver euler --steps 20 $F --out runs/pictures/cfm-ot
  python rectified_flow.py --ckpt $S/2d-rf1/ckpt.pt --steps 20 $F --out runs/pictures/rf1
  python rectified_flow.py --ckpt $S/2d-rf2/ckpt.pt --steps 20 $F --out runs/pictures/rf2
  python meanflow.py --ckpt $S/2d-meanflow/ckpt.pt --steps 1 $F --out runs/pictures/mf1
  python meanflow.py --ckpt $S/2d-meanflow/ckpt.pt --steps 2 $F --out runs/pictures/mf2
  python benchmarks/figures.py trajectories --cols 4 "DDPM ancestral, 1000 steps=runs/pictures/ddpm" \
    "DDIM eta=0, 50 steps=runs/pictures/ddim" "CFM, independent coupling=runs/pictures/cfm" \
    "CFM, OT coupling=runs/pictures/cfm-ot" "1-RF=runs/pictures/rf1" "2-RF (reflow of 1-RF)=runs/pictures/rf2" \
    "MeanFlow, 1 jump=runs/pictures/mf1" "MeanFlow, 2 jumps=runs/pictures/mf2" ;;
loss)
  F="--data checkerboard --uncond --n-eval 0"
  python ddpm.py $F --out runs/loss/ddpm
  python cfm.py $F --out runs/loss/cfm
  python cfm.py $F --coupling ot --out runs/loss/cfm-ot
  python rectified_flow.py $F --out runs/loss/rf1
  python rectified_flow.py $F --reflow-from runs/loss/rf1/ckpt.pt --out runs/loss/rf2
  python benchmarks/figures.py loss runs/loss/{ddpm,cfm,cfm-ot,rf1,rf2} --out benchmarks/results/img/loss-2d.png ;;
strips)  # every strip starts from the same four noises: --trajectory's generator is seeded with --seed + 4
  F="--n-eval 0 --trajectory 4"
  python ddpm.py --ckpt $S/digits-ddpm/ckpt.pt $F --out runs/pictures/ddpm-digits
  python ddim.py --ckpt $S/digits-ddpm/ckpt.pt --steps 50 --eta 0 $F --out runs/pictures/ddim-digits
  python cfm.py --ckpt $S/digits-cfm/ckpt.pt $F --out runs/pictures/cfm-digits
  python rectified_flow.py --ckpt $S/digits-rf1/ckpt.pt --steps 100 $F --out runs/pictures/rf1-digits
  python rectified_flow.py --ckpt $S/digits-rf2-distill/ckpt.pt --steps 1 $F --out runs/pictures/distill-digits
  python meanflow.py --ckpt $S/digits-meanflow/ckpt.pt --steps 2 $F --out runs/pictures/meanflow-digits
  python benchmarks/figures.py strips "DDPM, 1000 steps=runs/pictures/ddpm-digits" \
    "DDIM eta=0, 50 steps=runs/pictures/ddim-digits" "CFM, midpoint x 10=runs/pictures/cfm-digits" \
    "1-RF, 100 Euler steps=runs/pictures/rf1-digits" "2-RF + distill, 1 step=runs/pictures/distill-digits" \
    "MeanFlow, 2 steps=runs/pictures/meanflow-digits" ;;
default)
  python ddpm.py --out runs/ddpm-digits
  cp runs/ddpm-digits/samples.png benchmarks/results/img/ddpm-default.png ;;
*)
  echo "usage: bash benchmarks/pictures.sh trajectories|loss|strips|default" >&2
  exit 2 ;;
esac
