#!/usr/bin/env bash
# The code package's start script — train_job.yaml: RUN_SCRIPTS: "${WORKING_PATH}/run.sh".
#
# In the job's pod, $WORKING_PATH is this unpacked folder, the datasets are under /data_space/input/
# (scripts/auto_matrix_algo/configs/4pe_resize/datasets.yaml names them) and /data_space/output/ is
# synced to the dataspace when the job ends. The job image supplies MXNet and the trainer.
#
#   AIDI_CTX=0,1,2,3     devices (default: 0,1,2,3 for GPU_PER_WORKER: 4; `cpu` to try it on a CPU)
#   PIPELINE_TEST=1      run the whole pipeline fast on the validation set (debugging)
#   extra arguments      go to the trainer, e.g. `run.sh --check` or `run.sh --datasets FILE`
set -euo pipefail

WORKING_PATH="${WORKING_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
args=(--config "${WORKING_PATH}/scripts/auto_matrix_algo/configs/4pe_resize/multitask.py" --ctx "${AIDI_CTX:-0,1,2,3}")
if [[ "${PIPELINE_TEST:-0}" == 1 ]]; then
    args+=(--pipeline-test)
fi
exec bash "${WORKING_PATH}/scripts/auto_matrix_algo/tools/quanti_training_2step_fusion_bn.sh" "${args[@]}" "$@"
