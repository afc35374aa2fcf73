"""The workflow: fill the lab's tables (lab_pipeline.py), compute every neuron's MEI, look at
the results. Running it again computes nothing new."""

import datajoint as dj

from mei import zoo
from mei.main import MEIMethod, MEISeed

from lab_pipeline import MEI, Dataset, Selector, TrainedEnsembleModel, TrainedModel

if MEI.storage not in (dj.config.get("stores") or {}):  # MEI files go to this store
    raise SystemExit(f'configure the store {MEI.storage!r} first, e.g. eval "$(mei db env)"')

# 1. the data and the models fitted to it (a lab has these already)
dataset = {"dataset_id": 1}
Dataset().insert1(dict(dataset, n_images=512), skip_duplicates=True)
TrainedModel().populate()

# 2. an ensemble of the dataset's models, and which output is which neuron
ensemble = TrainedEnsembleModel().create_ensemble(dataset, comment="both fits")
Selector().populate()

# 3. a method (how to optimize) and a seed (where to start)
method_config = {
    "device": "cpu",  # or "cuda"
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 10.0}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 100}},
    "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
}
method = MEIMethod().add_method("mei.methods.gradient_ascent", method_config, comment="SGD")
MEISeed().insert1({"mei_seed": 42}, skip_duplicates=True)

# 4. compute: all neurons of the ensemble in one batched run
MEI().populate(batch_size=64)
remaining, total = MEI().progress(display=False)
print(f"MEI: {total - remaining} of {total} computed")

# 5. the results: each MEI should look like its neuron's filter
truth = Dataset().true_filters(dataset)
for unit in range(len(truth)):
    neuron_id = (Selector & dataset & {"output_unit": unit}).fetch1("neuron_id")
    key = dict(ensemble, **method, mei_seed=42, neuron_id=neuron_id)
    mei = MEI().load_mei(key)  # a torch.Tensor (1, 1, 16, 16)
    output = MEI().load_output(key)  # {objective path: {"times": [...], "values": [...]}}
    score = (MEI & key).fetch1("score")
    r = zoo.correlation(mei, truth[unit : unit + 1]).item()
    print(f"neuron {neuron_id}: score {score:.2f}, correlation with its filter {r:.3f}")
