"""Pack the adas_mini `lane_parsing` scene (parsing):

    bash tools/pipeline.sh --config configs/4pe_lane_parsing/train.py
"""

scene = "lane_parsing"
task = "parsing"
# The label of a mask pixel is its index in this list.
classes = [
    "background",
    "solid_line",
    "dashed_line",
    "road_edge",
]

source = "data/adas_mini/lane_parsing"    # relative to the directory you run from
images = "images"                         # JPEGs, relative to source
masks = "masks"                           # PNG masks, same stem: pixel = class id, 255 = ignore
output = "data/rec/lane_parsing"          # {train,val}.{rec,idx} and manifest.json

resize = None                             # None: JPEGs pass through; 160: shorter edge; (W, H); masks: nearest
jpeg_quality = 95                         # used only when re-encoding
val_fraction = 0.1                        # share of images in val, chosen by a hash of the file name
