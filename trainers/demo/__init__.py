"""The offline `llava demo`: a synthetic world of coloured shapes (`world`), tiny CLIP and Vicuna stand-ins pretrained
on it (`backbones`), then LLaVA's two stages and a held-out evaluation, all on a laptop CPU in a few minutes."""
