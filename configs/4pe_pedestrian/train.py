"""Pack the adas_mini `pedestrian` scene (detection):

    bash tools/pipeline.sh --config configs/4pe_pedestrian/train.py
"""

scene = "pedestrian"
task = "detection"
# The label of a box is its index in this list.
classes = [
    "pedestrian",
]

source = "data/adas_mini/pedestrian"      # relative to the directory you run from
annotations = "annotations.json"          # COCO-style boxes, relative to source
output = "data/rec/pedestrian"            # {train,val}.{rec,idx} and manifest.json

resize = None                             # None: JPEGs pass through; 160: shorter edge; (W, H)
jpeg_quality = 95                         # used only when re-encoding
val_fraction = 0.1                        # share of images in val, chosen by a hash of the file name
