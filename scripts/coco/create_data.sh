#!/bin/bash
# LMDBs of AnnotatedDatum for COCO, as the fork's data/coco/create_data.sh (label map entries
# named by category id, as labelmap_coco.prototxt). Run create_list.sh first.
# Usage: create_data.sh [COCO_DIR] [LIST_DIR] [LABELMAP]
set -euo pipefail
data_root_dir=${1:-$HOME/data/coco}
list_dir=${2:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"}
mapfile=${3:-$list_dir/labelmap_coco.prototxt}
dataset_name="coco"
db="lmdb"
extra_cmd="--encode-type=jpg --encoded --redo"
for subset in minival train
do
  protonet create-annoset --anno-type=detection --label-type=json --label-map-file="$mapfile" \
    --min-dim=0 --max-dim=0 --resize-width=0 --resize-height=0 --check-label $extra_cmd \
    "$data_root_dir" "$list_dir/$subset.txt" \
    "$data_root_dir/$db/${dataset_name}_${subset}_${db}" "examples/$dataset_name" \
    2>&1 | tee "$list_dir/$subset.log"
done
