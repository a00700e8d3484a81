#!/bin/bash

# Parameters
#SBATCH --account=lop
#SBATCH --constraint=a100-80gb
#SBATCH --cpus-per-task=32
#SBATCH --error=<SWEEP_DIR>/slurm/%j_0_log.err
#SBATCH --exclude=gpu07
#SBATCH --gpus-per-node=4
#SBATCH --job-name=lop-cloning_noise-paper
#SBATCH --mem=240GB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=<SWEEP_DIR>/slurm/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=long
#SBATCH --requeue
#SBATCH --reservation=lop-week
#SBATCH --signal=USR2@90
#SBATCH --time=2880

# setup
module load cuda/12.4

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <SWEEP_DIR>/slurm/%j_%t_log.out --error <SWEEP_DIR>/slurm/%j_%t_log.err <PYTHON> -u -m submitit.core._submit <SWEEP_DIR>/slurm
