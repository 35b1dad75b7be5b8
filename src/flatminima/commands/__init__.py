"""The shells: every ``flatminima`` verb and the glue between the libraries and the run store.

One module per verb or verb group (:mod:`.train`, :mod:`.runs`, :mod:`.measure`, :mod:`.jamming`,
:mod:`.explore`, :mod:`.perceptron`, :mod:`.study`); :mod:`flatminima.cli` mounts them. The libraries below
know nothing of the store: commands create a run, hand the work to the library, and write what comes back
(config, metrics, results, figures) into the run's row and folder. Options and statuses shared by every
verb are in :mod:`._common`.
"""
