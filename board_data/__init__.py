"""Where board images come from, for the simulator, training and tests: the synthetic
generator of DeepPCB-style boards (``synthetic``), what a scanner does to a board
(``scan``), and readers of DeepPCB's layout (``deeppcb``) and of class-labelled image
folders such as NEU-DET (``image_folder``)."""
