"""Helpers shared by the semantic segmentation, plot and video tests."""
import importlib
import os

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name):
    """The package module behind tools/<name>.py (d2ext.cli.<name>)."""
    return importlib.import_module(f"d2ext.cli.{name}")


def write_video(path, num_frames, size=(80, 64), fps=7.0):
    """A small moving-disc video; MJPG for .avi, mp4v otherwise."""
    fourcc = "MJPG" if path.endswith(".avi") else "mp4v"
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(num_frames):
        frame = np.full((size[1], size[0], 3), 20 * i, np.uint8)
        cv2.circle(frame, (8 + 5 * i, size[1] // 2), 8, (0, 0, 255), -1)
        writer.write(frame)
    writer.release()


def video_info(path):
    """(decodable frames, fps, width, height) of a video file."""
    capture = cv2.VideoCapture(path)
    frames = 0
    while capture.read()[0]:
        frames += 1
    info = (frames, capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    return info
