"""Unit tests never reach a hub: dataset/model loaders see an offline machine."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
