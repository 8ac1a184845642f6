#!/bin/bash
# List files for VOC07+12, as the fork's data/VOC0712/create_list.sh:
#   trainval.txt (VOC2007 + VOC2012 trainval, shuffled), test.txt (VOC2007 test) and
#   test_name_size.txt ("name height width", DetectionEvaluate's name_size_file).
# Usage: create_list.sh [VOCDEVKIT_DIR] [OUT_DIR]
set -euo pipefail
root_dir=${1:-$HOME/data/VOCdevkit}
out_dir=${2:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"}
protonet create-list voc "$root_dir" "$out_dir" --trainval VOC2007 --trainval VOC2012 --test VOC2007
