#!/bin/bash

# Parameters
#SBATCH --cpus-per-task=32
#SBATCH --error=<SWEEP_DIR>/slurm/%j_0_log.err
#SBATCH --job-name=lop-bitflip-paper
#SBATCH --mem=64GB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=<SWEEP_DIR>/slurm/%j_0_log.out
#SBATCH --partition=cpu
#SBATCH --signal=USR2@90
#SBATCH --time=90

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <SWEEP_DIR>/slurm/%j_%t_log.out --error <SWEEP_DIR>/slurm/%j_%t_log.err <PYTHON> -u -m submitit.core._submit <SWEEP_DIR>/slurm
