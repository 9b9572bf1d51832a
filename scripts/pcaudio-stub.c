/* A stand-in for libpcaudio.so.0 (pcaudiolib 1.2), for shipping libespeak-ng to a host that
 * has neither it nor PulseAudio/ALSA (scripts/ship-tts.sh builds it into ship/lib/).
 *
 * libespeak-ng links pcaudio only to play audio itself (AUDIO_OUTPUT_PLAYBACK and friends).
 * arbiter-tts initialises it with AUDIO_OUTPUT_SYNCHRONOUS and takes the samples from the
 * synthesis callback, so none of these is called; should one be, it fails: no device is
 * created and every operation reports an error. Signatures as in <pcaudiolib/audio.h>
 * (libpcaudio-dev 1.2); the format enum is passed as an int, as C passes enums. */

#include <stddef.h>
#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))

struct audio_object;

/* -ENODEV: what the real library's backends return when there is no device. */
#define NO_DEVICE (-19)

EXPORT struct audio_object *create_audio_device_object(const char *device,
                                                       const char *application_name,
                                                       const char *description)
{
    (void)device;
    (void)application_name;
    (void)description;
    return NULL;
}

EXPORT int audio_object_open(struct audio_object *object, int format, uint32_t rate,
                             uint8_t channels)
{
    (void)object;
    (void)format;
    (void)rate;
    (void)channels;
    return NO_DEVICE;
}

EXPORT void audio_object_close(struct audio_object *object) { (void)object; }

EXPORT void audio_object_destroy(struct audio_object *object) { (void)object; }

EXPORT int audio_object_write(struct audio_object *object, const void *data, size_t bytes)
{
    (void)object;
    (void)data;
    (void)bytes;
    return NO_DEVICE;
}

EXPORT int audio_object_drain(struct audio_object *object)
{
    (void)object;
    return NO_DEVICE;
}

EXPORT int audio_object_flush(struct audio_object *object)
{
    (void)object;
    return NO_DEVICE;
}

EXPORT const char *audio_object_strerror(struct audio_object *object, int error)
{
    (void)object;
    (void)error;
    return "no audio device (arbiter's libpcaudio stub: playback is not supported)";
}
