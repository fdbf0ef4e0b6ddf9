"""A synthetic twin of CUHK-PEDES, ICFG-PEDES and RSTPReid: drawn pedestrians, described in words.

`people` (what defines an identity), `drawing` (a photo of one), `captions` (a description of one)
and `layouts` (`write_synthetic`: a dataset folder in a benchmark's layout).

Real benchmarks cannot be downloaded everywhere (tests, CI, demos). `write_synthetic` writes a
dataset in exactly the download layout of one of them, annotation JSON and `imgs/` included, so the
whole pipeline runs on it unchanged. Each identity is a set of visible attributes (clothing colours,
garment types and patterns, bag, hat, hair, glasses, build, shoes); each image of that identity
varies what does not define it (view, pose, position, scale, background, lighting, blur, noise,
compression); each caption names the attributes in varied wording, order and length, plus what is
particular to its image (the view). A small model can therefore learn to match them, and no two
identities of a dataset share the attributes that stand out most.
"""

from promptdecouple.data.synthetic.captions import write_caption
from promptdecouple.data.synthetic.drawing import render_person
from promptdecouple.data.synthetic.layouts import write_synthetic
from promptdecouple.data.synthetic.people import Person, draw_person_attributes

__all__ = ["Person", "draw_person_attributes", "render_person", "write_caption", "write_synthetic"]
