import sys, collections, pickle, os
import numpy as np
import segmentation.search.descriptor as D
from tools.bag_views import bag, view
split = "tuning"; N, Q = 600, 100
cache = f"/tmp/views_{split}.pkl"
if os.path.exists(cache):
    views = pickle.load(open(cache, "rb"))
else:
    views = {}
    for i in range(N):
        b = bag(split, i)
        views[i] = [view(b, 1), view(b, 2)] + ([view(b, 7, where="photo"), view(b, 3)] if i < Q else [])
    pickle.dump(views, open(cache, "wb"))
def run(label):
    G = np.stack([D.describe(views[i][k]) for i in range(N) for k in (0, 1)]); ids = np.repeat(np.arange(N), 2)
    res = {}
    for qk, name in ((2, "photo"), (3, "belt")):
        t1 = t5 = 0
        for i in range(Q):
            s = G @ D.describe(views[i][qk])
            ranked = list(dict.fromkeys(ids[np.argsort(-s)].tolist()))
            t1 += ranked[0] == i; t5 += i in ranked[:5]
        res[name] = (t1 / Q, t5 / Q)
    print(label, res, flush=True)
exec(open(sys.argv[1]).read()) if len(sys.argv) > 1 else run("base")
