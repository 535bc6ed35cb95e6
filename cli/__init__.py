"""Entry points: the ``rerankd`` command. The only package that imports both the serving side
(``server``) and the model side (``training``, ``evaluation``, ``export``)."""
