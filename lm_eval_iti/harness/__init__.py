"""Everything that imports lm_eval lives here: the hf-iti model, its registration, the task driver and the request builders."""
