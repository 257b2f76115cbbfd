"""Sequential models (SASRec, HSTU): the next-item objective and ranking metrics (``ranking``), the Ray Train worker
(``loop``) and driver (``run``), loading a run (``load``), a teacher inside the workers (``teacher``) and the user
vectors export (``export``)."""
